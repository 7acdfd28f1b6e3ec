import CustosCore
import Foundation

/// Reads the `policy` section: the ordered rules of docs/policy.md.
enum PolicyConfig {
    static func parse(_ value: Any?) throws(ConfigError) -> Policy? {
        guard value != nil, !(value is NSNull) else { return nil }
        var reader = try ConfigReader(value, path: "policy")
        let defaultMessage = try reader.string("default_message", default: "denied by policy: no rule allows this statement")
        guard let list = reader.raw("rules") as? [Any] else {
            throw ConfigError(key: "policy.rules", problem: "expected a list of rules")
        }
        var rules: [PolicyRule] = []
        var names: Set<String> = []
        for (index, item) in list.enumerated() {
            let rule = try parseRule(item, path: "policy.rules[\(index)]")
            guard names.insert(rule.name).inserted else {
                throw ConfigError(key: "policy.rules[\(index)].name", problem: "duplicate rule name \"\(rule.name)\"")
            }
            rules.append(rule)
        }
        let masking = try parseMasking(reader.raw("masking"), path: reader.key("masking"))
        try reader.finish()
        return Policy(rules: rules, defaultMessage: defaultMessage, masking: masking)
    }

    /// `policy.masking`: ordered rules; the first matching the identity and connection applies.
    static func parseMasking(_ value: Any?, path: String) throws(ConfigError) -> MaskingPolicy {
        guard value != nil, !(value is NSNull) else { return MaskingPolicy() }
        guard let list = value as? [Any] else { throw ConfigError(key: path, problem: "expected a list of masking rules") }
        var rules: [MaskingRule] = []
        var names: Set<String> = []
        for (index, item) in list.enumerated() {
            var reader = try ConfigReader(item, path: "\(path)[\(index)]")
            let name = try reader.string("name")
            guard names.insert(name).inserted else { throw ConfigError(key: reader.key("name"), problem: "duplicate masking rule name \"\(name)\"") }
            var match = try reader.child("match")
            let subjects = try nonEmpty(match.stringList("subjects"), match.key("subjects"))
            let groups = try nonEmpty(match.stringList("groups"), match.key("groups"))
            let connections = try nonEmpty(match.stringList("connections"), match.key("connections"))
            try match.finish()
            var columns: [String: MaskingStrategy] = [:]
            for (column, strategy) in try strategies(reader.raw("columns"), path: reader.key("columns")) {
                let parts = column.split(separator: ".", omittingEmptySubsequences: false)
                guard parts.count == 2 || parts.count == 3, parts.allSatisfy({ !$0.isEmpty }) else {
                    throw ConfigError(key: reader.key("columns"), problem: "\"\(column)\" is not table.column or schema.table.column")
                }
                columns[column.lowercased()] = strategy
            }
            // A map has no order: exact names first, then longer (more specific) patterns.
            let columnNames = try strategies(reader.raw("column_names"), path: reader.key("column_names"))
                .map { ColumnNamePattern(pattern: $0.key.lowercased(), strategy: $0.value) }
                .sorted { a, b in
                    let (wa, wb) = (a.pattern.contains("*") || a.pattern.contains("?"), b.pattern.contains("*") || b.pattern.contains("?"))
                    if wa != wb { return !wa }
                    return a.pattern.count != b.pattern.count ? a.pattern.count > b.pattern.count : a.pattern < b.pattern
                }
            var detectors: [Detector: MaskingStrategy] = [:]
            let detectorValue = reader.raw("detectors")
            if let names = detectorValue as? [String] {
                // A list enables detectors with the default strategy, redact.
                for name in names {
                    guard let detector = Detector(rawValue: name) else { throw unknownDetector(name, reader.key("detectors")) }
                    detectors[detector] = .redact
                }
            } else {
                for (name, strategy) in try strategies(detectorValue, path: reader.key("detectors")) {
                    guard let detector = Detector(rawValue: name) else { throw unknownDetector(name, reader.key("detectors")) }
                    detectors[detector] = strategy
                }
            }
            try reader.finish()
            rules.append(
                MaskingRule(
                    name: name, subjects: subjects, groups: groups, connections: connections, columns: columns, columnNames: columnNames,
                    detectors: detectors))
        }
        return MaskingPolicy(rules: rules)
    }

    private static func unknownDetector(_ name: String, _ key: String) -> ConfigError {
        ConfigError(key: key, problem: "unknown detector \(name) (\(Detector.allCases.map(\.rawValue).joined(separator: ", ")))")
    }

    /// A map of names to strategies (`email: hash`).
    private static func strategies(_ value: Any?, path: String) throws(ConfigError) -> [String: MaskingStrategy] {
        guard value != nil, !(value is NSNull) else { return [:] }
        guard let map = value as? [String: Any] else { throw ConfigError(key: path, problem: "expected a map of names to strategies") }
        var result: [String: MaskingStrategy] = [:]
        for (name, raw) in map {
            guard let text = raw as? String, let strategy = MaskingStrategy(rawValue: text) else {
                throw ConfigError(key: "\(path).\(name)", problem: "expected a strategy: redact, partial, hash or null")
            }
            result[name] = strategy
        }
        return result
    }

    private static func parseRule(_ value: Any?, path: String) throws(ConfigError) -> PolicyRule {
        var reader = try ConfigReader(value, path: path)
        let name = try reader.string("name")
        guard name != "default", name != "empty" else { throw ConfigError(key: reader.key("name"), problem: "\"\(name)\" is reserved") }
        let actionText = try reader.string("action")
        guard let verdict = PolicyRule.Verdict(rawValue: actionText) else {
            throw ConfigError(key: reader.key("action"), problem: "expected allow, deny or review")
        }
        var match = try reader.child("match")
        var flags: Set<StatementInfo.Flag>?
        if let names = try match.stringList("flags") {
            flags = []
            for flagName in names {
                guard let flag = StatementInfo.Flag(rawValue: flagName) else {
                    throw ConfigError(key: match.key("flags"), problem: "unknown flag \(flagName) (destructive, privileged, opaque, unparseable)")
                }
                flags?.insert(flag)
            }
        }
        let readOnlyValue = match.raw("read_only")
        guard readOnlyValue == nil || readOnlyValue is Bool else { throw ConfigError(key: match.key("read_only"), problem: "expected true or false") }
        let rule = PolicyRule(
            name: name, subjects: try nonEmpty(match.stringList("subjects"), match.key("subjects")),
            groups: try nonEmpty(match.stringList("groups"), match.key("groups")),
            connections: try nonEmpty(match.stringList("connections"), match.key("connections")),
            kinds: try nonEmpty(match.stringList("kinds"), match.key("kinds")).map { $0.map { $0.lowercased() } },
            flags: flags, tables: try nonEmpty(match.stringList("tables"), match.key("tables")),
            functions: try nonEmpty(match.stringList("functions"), match.key("functions")).map { $0.map { $0.lowercased() } },
            readOnly: readOnlyValue as? Bool, time: try parseTime(match.raw("time"), path: match.key("time")),
            verdict: verdict, message: try reader.optionalString("message"), limits: try parseLimits(reader.raw("limits"), path: reader.key("limits")),
            review: try parseReview(&reader, verdict: verdict))
        try match.finish()
        try reader.finish()
        if verdict != .allow, rule.limits != Limits() {
            throw ConfigError(key: reader.key("limits"), problem: "limits apply only to allow rules")
        }
        return rule
    }

    /// `approvers`, `required_approvals`, `hold_timeout`, `approval_ttl`: on review rules only.
    private static func parseReview(_ reader: inout ConfigReader, verdict: PolicyRule.Verdict) throws(ConfigError) -> ReviewSettings {
        let keys = ["approvers", "required_approvals", "hold_timeout", "approval_ttl"]
        if verdict != .review, let key = keys.first(where: { reader.values[$0] != nil }) {
            throw ConfigError(key: reader.key(key), problem: "applies only to review rules")
        }
        var review = ReviewSettings()
        review.approvers = try nonEmpty(reader.stringList("approvers"), reader.key("approvers")) ?? []
        review.required = try reader.int("required_approvals", default: 1, range: 1...100)
        let hold = try reader.duration("hold_timeout", default: 60)
        guard hold > 0, hold <= 3600 else { throw ConfigError(key: reader.key("hold_timeout"), problem: "between 1s and 1h") }
        review.holdTimeout = .milliseconds(Int64(hold * 1000))
        let ttl = try reader.duration("approval_ttl", default: 3600)
        guard ttl >= hold, ttl <= 30 * 86_400 else {
            throw ConfigError(key: reader.key("approval_ttl"), problem: "at least the hold timeout and at most 30d")
        }
        review.ttl = .milliseconds(Int64(ttl * 1000))
        return review
    }

    private static func nonEmpty(_ list: [String]?, _ key: String) throws(ConfigError) -> [String]? {
        if let list, list.isEmpty { throw ConfigError(key: key, problem: "an empty list matches nothing; remove the key to match anything") }
        return list
    }

    private static func parseLimits(_ value: Any?, path: String) throws(ConfigError) -> Limits {
        var reader = try ConfigReader(value, path: path)
        var limits = Limits()
        if reader.values["max_rows"] != nil { limits.maxRows = try reader.int("max_rows", range: 0...Int(Int32.max)) }
        if reader.values["statement_timeout"] != nil {
            let seconds = try reader.duration("statement_timeout", default: 0)
            guard seconds > 0 else { throw ConfigError(key: reader.key("statement_timeout"), problem: "must be positive") }
            limits.statementTimeout = .milliseconds(Int64(seconds * 1000))
        }
        if let rate = reader.raw("rate") {
            guard let number = (rate as? Double) ?? (rate as? Int).map(Double.init), number > 0, number.isFinite else {
                throw ConfigError(key: reader.key("rate"), problem: "expected a positive number of statements per second")
            }
            limits.ratePerSecond = number
        }
        try reader.finish()
        return limits
    }

    private static let weekdayNames = ["mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7]

    private static func parseTime(_ value: Any?, path: String) throws(ConfigError) -> TimeWindow? {
        guard value != nil else { return nil }
        var reader = try ConfigReader(value, path: path)
        var weekdays: Set<Int> = []
        for day in try reader.stringList("days") ?? [] {
            guard let number = weekdayNames[String(day.lowercased().prefix(3))] else {
                throw ConfigError(key: reader.key("days"), problem: "unknown day \(day) (mon … sun)")
            }
            weekdays.insert(number)
        }
        func minutes(_ name: String, _ fallback: String) throws(ConfigError) -> Int {
            let text = try reader.string(name, default: fallback)
            let parts = text.split(separator: ":")
            guard parts.count == 2, let hour = Int(parts[0]), let minute = Int(parts[1]), (0...24).contains(hour), (0..<60).contains(minute),
                hour * 60 + minute <= 1440
            else { throw ConfigError(key: reader.key(name), problem: "expected HH:MM") }
            return hour * 60 + minute
        }
        let from = try minutes("from", "00:00")
        let to = try minutes("to", "24:00")
        let zoneName = try reader.string("timezone", default: "UTC")
        guard let zone = TimeZone(identifier: zoneName) else { throw ConfigError(key: reader.key("timezone"), problem: "unknown time zone \(zoneName)") }
        try reader.finish()
        return TimeWindow(weekdays: weekdays, from: from, to: to, timeZone: zone)
    }
}
