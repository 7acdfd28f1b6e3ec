import Foundation

/// One masking rule: who it applies to, and what it masks. Match fields nil = any.
public struct MaskingRule: Sendable, Equatable {
    public var name: String
    /// Subjects (`sub`) or emails.
    public var subjects: [String]?
    public var groups: [String]?
    public var connections: [String]?
    /// "table.column" or "schema.table.column" (lowercased) -> strategy.
    public var columns: [String: MaskingStrategy]
    /// Globs (`*`, `?`) on the column name alone (any table), lowercased, first match wins.
    public var columnNames: [ColumnNamePattern]
    /// Detectors for values no column rule names.
    public var detectors: [Detector: MaskingStrategy]

    public init(
        name: String, subjects: [String]? = nil, groups: [String]? = nil, connections: [String]? = nil,
        columns: [String: MaskingStrategy] = [:], columnNames: [ColumnNamePattern] = [], detectors: [Detector: MaskingStrategy] = [:]
    ) {
        self.name = name
        self.subjects = subjects
        self.groups = groups
        self.connections = connections
        self.columns = columns
        self.columnNames = columnNames
        self.detectors = detectors
    }

    /// Same conditions as a statement rule (see ``PolicyRule``): all present must hold, any list element may match.
    func matches(_ identity: Identity, connection: String) -> Bool {
        if let subjects, !subjects.contains(identity.subject), !(identity.email.map(subjects.contains) ?? false) { return false }
        if let groups, !identity.groups.contains(where: groups.contains) { return false }
        if let connections, !connections.contains(connection) { return false }
        return true
    }

    /// Canonical form for the policy version hash.
    public var canonical: CanonicalJSON {
        func list(_ values: [String]?) -> CanonicalJSON { values.map { .array($0.map(CanonicalJSON.string)) } ?? .null }
        return [
            "name": .string(name), "subjects": list(subjects), "groups": list(groups), "connections": list(connections),
            "columns": .object(columns.mapValues { .string($0.rawValue) }),
            "column_names": .array(columnNames.map { ["pattern": .string($0.pattern), "strategy": .string($0.strategy.rawValue)] }),
            "detectors": .object(Dictionary(uniqueKeysWithValues: detectors.map { ($0.key.rawValue, .string($0.value.rawValue)) })),
        ]
    }
}

/// A glob on column names (`*` any run, `?` one character) and the strategy for columns it matches.
public struct ColumnNamePattern: Sendable, Equatable {
    public var pattern: String
    public var strategy: MaskingStrategy

    public init(pattern: String, strategy: MaskingStrategy) {
        self.pattern = pattern
        self.strategy = strategy
    }

    /// Whether `column` (already lowercased) matches; the pattern is compared lowercased.
    public func matches(_ column: String) -> Bool {
        Self.glob(Array(pattern.lowercased().utf8), Array(column.utf8))
    }

    /// Iterative glob: on a mismatch, retry from the last `*` one byte further (linear for one `*`).
    static func glob(_ pattern: [UInt8], _ text: [UInt8]) -> Bool {
        var p = 0, t = 0
        var star: Int?, resume = 0
        while t < text.count {
            if p < pattern.count, pattern[p] == 0x2A {
                star = p
                resume = t
                p += 1
            } else if p < pattern.count, pattern[p] == 0x3F || pattern[p] == text[t] {
                p += 1
                t += 1
            } else if let star {
                p = star + 1
                resume += 1
                t = resume
            } else {
                return false
            }
        }
        while p < pattern.count, pattern[p] == 0x2A { p += 1 }
        return p == pattern.count
    }
}

/// Ordered masking rules: the first rule matching the identity and connection gives the session's
/// profile; none matching masks nothing.
public struct MaskingPolicy: Sendable, Equatable {
    public var rules: [MaskingRule]

    public init(rules: [MaskingRule] = []) {
        self.rules = rules
    }

    public func profile(for identity: Identity, connection: String) -> MaskingProfile {
        guard let rule = rules.first(where: { $0.matches(identity, connection: connection) }) else { return .none }
        return MaskingProfile(rule: rule.name, columns: rule.columns, columnNames: rule.columnNames, detectors: rule.detectors)
    }

    /// Canonical form for the policy version hash.
    public var canonical: CanonicalJSON {
        ["rules": .array(rules.map(\.canonical))]
    }
}

/// What one identity on one connection gets masked.
public struct MaskingProfile: Sendable, Equatable {
    public static let none = MaskingProfile(rule: nil, columns: [:], columnNames: [], detectors: [:])

    /// The rule that matched.
    public var rule: String?
    /// "table.column" / "schema.table.column" -> strategy; keys are lowercased by `init`.
    public var columns: [String: MaskingStrategy]
    public var columnNames: [ColumnNamePattern]
    public var detectors: [Detector: MaskingStrategy]

    public init(rule: String?, columns: [String: MaskingStrategy], columnNames: [ColumnNamePattern], detectors: [Detector: MaskingStrategy]) {
        self.rule = rule
        self.columns = Dictionary(columns.map { ($0.key.lowercased(), $0.value) }, uniquingKeysWith: Self.stricter)
        self.columnNames = columnNames
        self.detectors = detectors
    }

    /// Nothing at all to mask.
    public var isEmpty: Bool { columns.isEmpty && columnNames.isEmpty && detectors.isEmpty }

    /// Whether any table.column rule exists (then the gateway must resolve column origins).
    public var hasColumnRules: Bool { !columns.isEmpty }

    /// The strategy for a result column: a table.column rule first ("customers.email" matches
    /// table customers in any schema; "public.customers.email" needs schema public, a nil schema
    /// counting as public), then the first column-name pattern matching `column`. nil when no
    /// rule names it (detectors then apply).
    public func strategy(schema: String?, table: String?, column: String) -> MaskingStrategy? {
        let column = column.lowercased()
        if let table = table?.lowercased(), !columns.isEmpty {
            if let strategy = columns["\(schema?.lowercased() ?? "public").\(table).\(column)"] { return strategy }
            if let strategy = columns["\(table).\(column)"] { return strategy }
        }
        return columnNames.first { $0.matches(column) }?.strategy
    }

    /// Whether `table` (as written in SQL: "customers" or "public.customers", lowercased) has any
    /// column named by a table.column rule, or any column-name pattern exists. An unqualified
    /// table matches rules for any schema: which one it is depends on the search_path.
    public func masksColumns(of table: String) -> Bool {
        if !columnNames.isEmpty { return true }
        let table = Self.split(table)
        return columns.keys.contains { Self.key($0, names: table) }
    }

    /// The strategy for a column referenced in SQL text (`column` as written, `table` the table it
    /// belongs to if known, as written), for masking literals compared with or assigned to it.
    /// Without a table, a rule on that column name in any table applies (a qualifier on `column`
    /// may be an alias, so it is ignored); when several apply, the strictest wins.
    public func strategy(forReference column: String, table: String?) -> MaskingStrategy? {
        var name = column.lowercased().replacingOccurrences(of: "\"", with: "")
        if let dot = name.lastIndex(of: ".") { name = String(name[name.index(after: dot)...]) }
        let names = table.map(Self.split)
        var best: MaskingStrategy?
        for (key, strategy) in columns {
            guard key.split(separator: ".").last.map(String.init) == name else { continue }
            if let names, !Self.key(key, names: names) { continue }
            best = best.map { Self.stricter($0, strategy) } ?? strategy
        }
        return best ?? columnNames.first { $0.matches(name) }?.strategy
    }

    /// A written table name as (schema, table), lowercased and unquoted.
    private static func split(_ written: String) -> (schema: String?, table: String) {
        let name = written.lowercased().replacingOccurrences(of: "\"", with: "")
        guard let dot = name.lastIndex(of: ".") else { return (nil, name) }
        return (String(name[..<dot]), String(name[name.index(after: dot)...]))
    }

    /// Whether a column key names a column of the written table.
    private static func key(_ key: String, names: (schema: String?, table: String)) -> Bool {
        let parts = key.split(separator: ".")
        switch parts.count {
        case 2: return parts[0] == names.table
        case 3: return parts[1] == names.table && (names.schema == nil || parts[0] == names.schema!)
        default: return false
        }
    }

    private static func stricter(_ a: MaskingStrategy, _ b: MaskingStrategy) -> MaskingStrategy {
        a.strictness >= b.strictness ? a : b
    }
}
