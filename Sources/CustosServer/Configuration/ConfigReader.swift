import Foundation

/// A configuration problem, naming the key and what is wrong with it.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    /// Dotted path of the offending key, e.g. `connections.appdb.port`.
    public var key: String
    public var problem: String

    public init(key: String, problem: String) {
        self.key = key
        self.problem = problem
    }

    public var description: String { key.isEmpty ? "config error: \(problem)" : "config error at \(key): \(problem)" }
}

/// Reads one YAML mapping with typed accessors that report the full key path on error and refuse
/// keys nobody reads (a typo must not silently fall back to a default).
struct ConfigReader {
    let path: String
    let values: [String: Any]
    private var known: Set<String> = []

    init(_ value: Any?, path: String) throws(ConfigError) {
        self.path = path
        if value == nil || value is NSNull {
            self.values = [:]
        } else if let mapping = value as? [String: Any] {
            self.values = mapping
        } else {
            throw ConfigError(key: path, problem: "expected a mapping")
        }
    }

    func key(_ name: String) -> String { path.isEmpty ? name : "\(path).\(name)" }

    mutating func raw(_ name: String) -> Any? {
        known.insert(name)
        let value = values[name]
        return value is NSNull ? nil : value
    }

    mutating func optionalString(_ name: String) throws(ConfigError) -> String? {
        guard let value = raw(name) else { return nil }
        if let text = value as? String { return text }
        if let number = value as? Int { return String(number) }
        throw ConfigError(key: key(name), problem: "expected a string")
    }

    mutating func string(_ name: String, default fallback: String? = nil) throws(ConfigError) -> String {
        if let value = try optionalString(name) {
            guard !value.isEmpty else { throw ConfigError(key: key(name), problem: "must not be empty") }
            return value
        }
        if let fallback { return fallback }
        throw ConfigError(key: key(name), problem: "is required")
    }

    mutating func int(_ name: String, default fallback: Int? = nil, range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard let value = raw(name) else {
            if let fallback { return fallback }
            throw ConfigError(key: key(name), problem: "is required")
        }
        guard let number = value as? Int, range.contains(number) else {
            throw ConfigError(key: key(name), problem: "expected an integer \(range.lowerBound)-\(range.upperBound)")
        }
        return number
    }

    mutating func bool(_ name: String, default fallback: Bool) throws(ConfigError) -> Bool {
        guard let value = raw(name) else { return fallback }
        guard let flag = value as? Bool else { throw ConfigError(key: key(name), problem: "expected true or false") }
        return flag
    }

    /// The longest duration a setting takes (100 years): every duration becomes a clock's
    /// nanoseconds (Int64) somewhere, and `1e300s` or `infs` must be an error, not a trap (found by
    /// scripts/fuzz config).
    static let maxDuration: TimeInterval = 36_500 * 86_400

    /// A duration such as `30s`, `500ms`, `5m`, `2h`, `7d`, or a number of seconds.
    mutating func duration(_ name: String, default fallback: TimeInterval) throws(ConfigError) -> TimeInterval {
        guard let value = raw(name) else { return fallback }
        let seconds: TimeInterval?
        if let whole = value as? Int {
            seconds = whole >= 0 ? TimeInterval(whole) : nil
        } else {
            seconds = (value as? String).flatMap(Self.parseDuration)
        }
        guard let seconds else { throw ConfigError(key: key(name), problem: "expected a duration such as 30s, 500ms, 5m") }
        guard seconds.isFinite, seconds <= Self.maxDuration else { throw ConfigError(key: key(name), problem: "must be at most 36500d") }
        return seconds
    }

    mutating func stringList(_ name: String) throws(ConfigError) -> [String]? {
        guard let value = raw(name) else { return nil }
        if let single = value as? String { return [single] }
        guard let list = value as? [Any], list.allSatisfy({ $0 is String }) else {
            throw ConfigError(key: key(name), problem: "expected a list of strings")
        }
        return list.map { $0 as! String }
    }

    mutating func child(_ name: String) throws(ConfigError) -> ConfigReader {
        try ConfigReader(raw(name), path: key(name))
    }

    /// Fails on any key that was never read.
    func finish() throws(ConfigError) {
        if let unknown = values.keys.filter({ !known.contains($0) }).sorted().first {
            throw ConfigError(key: key(unknown), problem: "unknown key")
        }
    }

    static func parseDuration(_ text: String) -> TimeInterval? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count)
            if let value = Double(number), value >= 0, !(suffix == "m" && number.hasSuffix("m")) { return value * factor }
        }
        return Double(text).flatMap { $0 >= 0 ? $0 : nil }
    }
}
