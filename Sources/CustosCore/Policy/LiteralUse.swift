/// A literal or parameter in a statement that touches a column, or a password: what masking a
/// recorded statement must look at. Found by the parser (CustosSQL), never by pattern matching.
public struct LiteralUse: Sendable, Equatable, Hashable {
    /// What the literal is used for.
    public enum Role: Sendable, Equatable, Hashable {
        /// Compared with (`=`, `<>`, `LIKE`, `IN (…)`, `BETWEEN`, …) or assigned to (`INSERT`
        /// column list, `UPDATE … SET`, `ON CONFLICT … SET`) this column. `column` is the
        /// column name as written (lowercased unless quoted); `table` the table it belongs to
        /// when the statement says (a qualifier, or the INSERT/UPDATE target), else nil.
        /// `column` is `*` for an INSERT without a column list (any column of `table`).
        case column(table: String?, column: String)
        /// A password (CREATE/ALTER ROLE/USER … PASSWORD, user mapping and server `password` options).
        case password
        /// Any column: the statement was too complex to follow (so many comparisons that finding
        /// each literal's columns would take seconds), so every literal may be any column's value.
        case unknown
    }

    /// The literal token's byte range in the statement text (UTF-8 offsets, quotes included);
    /// nil for a parameter.
    public var range: Range<Int>?
    /// For a `$n` parameter: n (1-based).
    public var parameter: Int?
    public var role: Role

    public init(range: Range<Int>? = nil, parameter: Int? = nil, role: Role) {
        self.range = range
        self.parameter = parameter
        self.role = role
    }
}

/// What a `COPY` statement copies and how its data is formatted.
public struct CopyInfo: Sendable, Equatable {
    public enum Format: String, Sendable, Equatable {
        case text, csv, binary
    }

    /// `COPY … FROM` (true) or `COPY … TO` (false).
    public var isFrom: Bool
    /// The table copied (as written, lowercased unless quoted); nil for `COPY (query) TO`.
    public var table: String?
    /// The explicit column list; empty when none was given.
    public var columns: [String]
    /// For `COPY (query) TO`: the query's own text.
    public var query: String?
    public var format: Format
    /// The field delimiter (tab for text, comma for CSV unless set).
    public var delimiter: UInt8
    /// The NULL marker (`\N` for text, empty for CSV unless set).
    public var null: String
    /// CSV quote and escape characters (both `"` unless set).
    public var quote: UInt8
    public var escape: UInt8
    /// CSV HEADER: the first line holds column names.
    public var header: Bool

    public init(
        isFrom: Bool, table: String?, columns: [String] = [], query: String? = nil, format: Format = .text, delimiter: UInt8? = nil,
        null: String? = nil, quote: UInt8 = UInt8(ascii: "\""), escape: UInt8? = nil, header: Bool = false
    ) {
        self.isFrom = isFrom
        self.table = table
        self.columns = columns
        self.query = query
        self.format = format
        self.delimiter = delimiter ?? (format == .csv ? UInt8(ascii: ",") : UInt8(ascii: "\t"))
        self.null = null ?? (format == .csv ? "" : "\\N")
        self.quote = quote
        self.escape = escape ?? quote
        self.header = header
    }
}
