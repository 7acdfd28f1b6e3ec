import CustosCore
import NIOCore

/// Masks the rows of `COPY … TO STDOUT` in text and CSV format. PostgreSQL sends one row per
/// CopyData message; each field is decoded (text escapes, CSV quoting), masked like a text value,
/// and encoded again, so the client's COPY reader still parses every row.
struct CopyPlan {
    var info: CopyInfo
    /// The columns in order, typed, each with its action.
    var columns: [RowPlan.Column]
    /// Columns unknown and only detectors apply: they look at the whole row.
    var detectWholeRow: Bool
    /// Columns unknown while column rules apply: every field is redacted (fail closed).
    var redactAll: Bool
    /// CSV HEADER: the first row holds column names and is passed as is.
    var headerPending: Bool

    var masks: Bool { detectWholeRow || redactAll || columns.contains { $0.action != .keep } }

    /// `columns` nil: the columns are unknown.
    init(info: CopyInfo, columns: [RowPlan.Column]?, profile: MaskingProfile) {
        self.info = info
        self.columns = columns ?? []
        self.detectWholeRow = columns == nil && !profile.hasColumnRules && profile.columnNames.isEmpty && !profile.detectors.isEmpty
        self.redactAll = columns == nil && (profile.hasColumnRules || !profile.columnNames.isEmpty)
        self.headerPending = info.header && info.format == .csv
    }

    /// A plan that redacts every field: for COPY output whose columns are unknown.
    static func redactingAll(_ info: CopyInfo) -> CopyPlan {
        var plan = CopyPlan(info: info, columns: nil, profile: .none)
        plan.redactAll = true
        return plan
    }

    /// The masked row, or nil when it goes unchanged. Fields are masked as text-format values of
    /// their column's type, so a masked number or date is NULL here too.
    mutating func mask(_ row: [UInt8], values: ValueMasker) -> [UInt8]? {
        if headerPending {
            headerPending = false
            return nil
        }
        guard masks else { return nil }
        if detectWholeRow {
            let strategies = values.detectors.mapValues { $0 == .null ? MaskingStrategy.redact : $0 }
            switch row.withUnsafeBytes({ values.masker.maskDetected($0, strategies: strategies) }) {
            case .unchanged: return nil
            case .replaced(let bytes): return bytes
            case .null: return Array("[redacted]\n".utf8)
            }
        }
        var line = row
        let newline = line.last == UInt8(ascii: "\n")
        if newline { line.removeLast() }
        let fields = info.format == .csv ? CSVRow.split(line, info: info) : TextRow.split(line, delimiter: info.delimiter)
        var changed = false
        var output: [[UInt8]?] = []
        for (index, field) in fields.enumerated() {
            guard let value = field else {
                output.append(nil)
                continue
            }
            let column: RowPlan.Column =
                redactAll || index >= columns.count
                ? RowPlan.Column(typeOID: 25, format: 0, typeClass: .text, action: .mask(.redact)) : columns[index]
            switch value.withUnsafeBytes({ values.mask($0, column: column) }) {
            case .keep:
                output.append(value)
            case .null:
                changed = true
                output.append(nil)
            case .bytes(let bytes):
                changed = true
                output.append(bytes)
            }
        }
        guard changed else { return nil }
        var out = info.format == .csv ? CSVRow.join(output, info: info) : TextRow.join(output, info: info)
        if newline { out.append(UInt8(ascii: "\n")) }
        return out
    }
}

/// COPY text format: fields split by the delimiter, backslash escapes, `\N` for NULL.
enum TextRow {
    static func split(_ line: [UInt8], delimiter: UInt8) -> [[UInt8]?] {
        var fields: [[UInt8]?] = []
        var current: [UInt8] = []
        var raw: [UInt8] = []  // the field as written, to recognise \N
        var index = 0
        func finish() {
            fields.append(raw == Array("\\N".utf8) ? nil : current)
            current.removeAll()
            raw.removeAll()
        }
        while index < line.count {
            let byte = line[index]
            if byte == delimiter {
                finish()
                index += 1
                continue
            }
            raw.append(byte)
            guard byte == UInt8(ascii: "\\"), index + 1 < line.count else {
                current.append(byte)
                index += 1
                continue
            }
            let next = line[index + 1]
            raw.append(next)
            index += 2
            switch next {
            case UInt8(ascii: "b"): current.append(8)
            case UInt8(ascii: "f"): current.append(12)
            case UInt8(ascii: "n"): current.append(10)
            case UInt8(ascii: "r"): current.append(13)
            case UInt8(ascii: "t"): current.append(9)
            case UInt8(ascii: "v"): current.append(11)
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                var value = Int(next - UInt8(ascii: "0"))
                var digits = 1
                while digits < 3, index < line.count, (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(line[index]) {
                    value = value * 8 + Int(line[index] - UInt8(ascii: "0"))
                    raw.append(line[index])
                    index += 1
                    digits += 1
                }
                current.append(UInt8(truncatingIfNeeded: value))
            case UInt8(ascii: "x"):
                var value = 0
                var digits = 0
                while digits < 2, index < line.count, let nibble = hexValue(line[index]) {
                    value = value * 16 + nibble
                    raw.append(line[index])
                    index += 1
                    digits += 1
                }
                if digits == 0 { current.append(UInt8(ascii: "x")) } else { current.append(UInt8(value)) }
            default: current.append(next)
            }
        }
        finish()
        return fields
    }

    static func join(_ fields: [[UInt8]?], info: CopyInfo) -> [UInt8] {
        var out: [UInt8] = []
        for (index, field) in fields.enumerated() {
            if index > 0 { out.append(info.delimiter) }
            guard let field else {
                out += Array(info.null.utf8)
                continue
            }
            for byte in field {
                switch byte {
                case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
                case 10: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
                case 13: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
                case 9 where info.delimiter == 9: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
                case info.delimiter: out += [UInt8(ascii: "\\"), byte]
                default: out.append(byte)
                }
            }
        }
        return out
    }

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte - UInt8(ascii: "A")) + 10
        default: nil
        }
    }
}

/// COPY CSV format: quoted fields may hold delimiters, quotes (escaped) and newlines; an
/// unquoted empty field is NULL (with the default NULL marker).
enum CSVRow {
    static func split(_ line: [UInt8], info: CopyInfo) -> [[UInt8]?] {
        var fields: [[UInt8]?] = []
        var current: [UInt8] = []
        var quoted = false
        var wasQuoted = false
        var index = 0
        let null = Array(info.null.utf8)
        func finish() {
            fields.append(!wasQuoted && current == null ? nil : current)
            current.removeAll()
            wasQuoted = false
        }
        while index < line.count {
            let byte = line[index]
            if quoted {
                // Inside quotes the escape character makes the next quote (or escape) literal;
                // with the default escape that is a doubled quote.
                if byte == info.escape, index + 1 < line.count, line[index + 1] == info.quote || line[index + 1] == info.escape,
                    info.escape != info.quote || line[index + 1] == info.quote
                {
                    current.append(line[index + 1])
                    index += 2
                    continue
                }
                if byte == info.quote {
                    quoted = false
                } else {
                    current.append(byte)
                }
                index += 1
                continue
            }
            if byte == info.quote {
                quoted = true
                wasQuoted = true
            } else if byte == info.delimiter {
                finish()
            } else {
                current.append(byte)
            }
            index += 1
        }
        finish()
        return fields
    }

    static func join(_ fields: [[UInt8]?], info: CopyInfo) -> [UInt8] {
        var out: [UInt8] = []
        let null = Array(info.null.utf8)
        for (index, field) in fields.enumerated() {
            if index > 0 { out.append(info.delimiter) }
            guard let field else {
                out += null
                continue
            }
            let needsQuotes = field.isEmpty || field == null || field.contains { $0 == info.delimiter || $0 == info.quote || $0 == 10 || $0 == 13 || $0 == info.escape }
            guard needsQuotes else {
                out += field
                continue
            }
            out.append(info.quote)
            for byte in field {
                if byte == info.quote || byte == info.escape { out.append(info.escape) }
                out.append(byte)
            }
            out.append(info.quote)
        }
        return out
    }
}
