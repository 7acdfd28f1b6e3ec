import Crypto
import Foundation

/// An ordered list of rules deciding, per statement, what may run. The first rule that matches
/// decides; when none does, the statement is denied (rule `default`).
public struct Policy: Sendable, Equatable {
    public var rules: [PolicyRule]
    /// The message a client sees when no rule matched.
    public var defaultMessage: String
    /// What each identity gets masked in results and records (docs/masking.md).
    public var masking: MaskingPolicy
    /// SHA-256 (hex) of the policy's canonical form: recorded with every decision.
    public let version: String
    /// The canonical JSON text whose SHA-256 is ``version``: what an evidence bundle carries.
    public let canonicalText: String

    public init(rules: [PolicyRule], defaultMessage: String = "denied by policy: no rule allows this statement", masking: MaskingPolicy = MaskingPolicy()) {
        self.rules = rules
        self.defaultMessage = defaultMessage
        self.masking = masking
        var canonical: CanonicalJSON = ["default_message": .string(defaultMessage), "rules": .array(rules.map(\.canonical))]
        // A policy without masking keeps the version it had before masking existed.
        if !masking.rules.isEmpty {
            canonical = ["default_message": .string(defaultMessage), "rules": .array(rules.map(\.canonical)), "masking": masking.canonical]
        }
        self.canonicalText = canonical.text
        self.version = EventChain.sha256Hex(canonical.bytes)
    }

    /// The policy that denies everything.
    public static let denyAll = Policy(rules: [])
}

/// One rule: conditions (all that are present must hold; within a list, any element may match),
/// an action, and limits that apply to statements it allows.
public struct PolicyRule: Sendable, Equatable {
    public enum Verdict: String, Sendable, Equatable, CaseIterable {
        case allow, deny, review
    }

    public var name: String
    /// Subjects (`sub`) or emails.
    public var subjects: [String]?
    public var groups: [String]?
    public var connections: [String]?
    /// Statement kinds (see ``StatementInfo/kind``).
    public var kinds: [String]?
    /// Matches statements carrying any of these flags. An `allow` rule never matches a statement
    /// carrying a flag it does not name, so flagged SQL is never allowed by accident.
    public var flags: Set<StatementInfo.Flag>?
    /// Tables read or written; `schema.*` and `*` wildcards.
    public var tables: [String]?
    public var functions: [String]?
    /// Only statements that read (true) or only those that do not (false).
    public var readOnly: Bool?
    public var time: TimeWindow?
    public var verdict: Verdict
    /// What a refused client sees (deny and review).
    public var message: String?
    public var limits: Limits
    /// For `review` rules: who approves, and how long the statement and its pass wait.
    public var review: ReviewSettings

    public init(
        name: String, subjects: [String]? = nil, groups: [String]? = nil, connections: [String]? = nil, kinds: [String]? = nil,
        flags: Set<StatementInfo.Flag>? = nil, tables: [String]? = nil, functions: [String]? = nil, readOnly: Bool? = nil,
        time: TimeWindow? = nil, verdict: Verdict, message: String? = nil, limits: Limits = Limits(), review: ReviewSettings = ReviewSettings()
    ) {
        self.review = review
        self.name = name
        self.subjects = subjects
        self.groups = groups
        self.connections = connections
        self.kinds = kinds
        self.flags = flags
        self.tables = tables
        self.functions = functions
        self.readOnly = readOnly
        self.time = time
        self.verdict = verdict
        self.message = message
        self.limits = limits
    }

    var canonical: CanonicalJSON {
        func list(_ values: [String]?) -> CanonicalJSON { values.map { .array($0.map(CanonicalJSON.string)) } ?? .null }
        var canonical: CanonicalJSON = [
            "name": .string(name), "subjects": list(subjects), "groups": list(groups), "connections": list(connections),
            "kinds": list(kinds), "flags": list(flags.map { $0.map(\.rawValue).sorted() }), "tables": list(tables),
            "functions": list(functions), "read_only": readOnly.map(CanonicalJSON.bool) ?? .null, "time": time?.canonical ?? .null,
            "action": .string(verdict.rawValue), "message": .optional(message), "limits": limits.canonical,
        ]
        // Rules without approvers keep the version they had before approvals existed.
        if case .object(var fields) = canonical, !review.approvers.isEmpty {
            fields["review"] = review.canonical
            canonical = .object(fields)
        }
        return canonical
    }
}

/// How a `review` rule's statements are decided: by members of `approvers` (never the
/// requester), `required` of them, while the statement is held up to `holdTimeout`; an approval
/// stays usable as a one-time pass until `ttl` after it was requested.
public struct ReviewSettings: Sendable, Equatable {
    /// Groups whose members may approve; none means the rule refuses at once (nobody could approve).
    public var approvers: [String]
    public var required: Int
    public var holdTimeout: Duration
    public var ttl: Duration

    public init(approvers: [String] = [], required: Int = 1, holdTimeout: Duration = .seconds(60), ttl: Duration = .seconds(3600)) {
        self.approvers = approvers
        self.required = required
        self.holdTimeout = holdTimeout
        self.ttl = ttl
    }

    var canonical: CanonicalJSON {
        return [
            "approvers": .array(approvers.map(CanonicalJSON.string)), "required": .int(Int64(required)),
            "hold_timeout_ms": canonicalMilliseconds(holdTimeout), "ttl_ms": canonicalMilliseconds(ttl),
        ]
    }
}

/// Limits an allowing rule puts on the statements it allows.
public struct Limits: Sendable, Equatable {
    /// More rows than this ends the statement with SQLSTATE 54000 (never silent truncation).
    public var maxRows: Int?
    /// A statement running longer is cancelled (SQLSTATE 57014).
    public var statementTimeout: Duration?
    /// Statements per second per identity under this rule; beyond it, SQLSTATE 53400.
    public var ratePerSecond: Double?

    public init(maxRows: Int? = nil, statementTimeout: Duration? = nil, ratePerSecond: Double? = nil) {
        self.maxRows = maxRows
        self.statementTimeout = statementTimeout
        self.ratePerSecond = ratePerSecond
    }

    /// The stricter of two sets of limits, limit by limit.
    public func combined(with other: Limits) -> Limits {
        func stricter<T: Comparable>(_ a: T?, _ b: T?) -> T? { a.flatMap { a in b.map { min(a, $0) } ?? a } ?? b }
        return Limits(
            maxRows: stricter(maxRows, other.maxRows), statementTimeout: stricter(statementTimeout, other.statementTimeout),
            ratePerSecond: stricter(ratePerSecond, other.ratePerSecond))
    }

    var canonical: CanonicalJSON {
        [
            "max_rows": .optional(maxRows),
            "statement_timeout_ms": statementTimeout.map(canonicalMilliseconds) ?? .null,
            "rate_per_second_milli": ratePerSecond.map { .int(Int64(($0 * 1000).rounded())) } ?? .null,
        ]
    }
}

/// Days and hours (in a time zone) when a rule applies.
public struct TimeWindow: Sendable, Equatable {
    /// 1 = Monday … 7 = Sunday; empty means every day.
    public var weekdays: Set<Int>
    /// Minutes after midnight; `from` inclusive, `to` exclusive; `to < from` spans midnight.
    public var from: Int
    public var to: Int
    public var timeZone: TimeZone

    public init(weekdays: Set<Int>, from: Int, to: Int, timeZone: TimeZone) {
        self.weekdays = weekdays
        self.from = from
        self.to = to
        self.timeZone = timeZone
    }

    public func contains(_ date: Date) -> Bool {
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = timeZone
        let parts = calendar.dateComponents([.weekday, .hour, .minute], from: date)
        // Calendar weekday: 1 = Sunday … 7 = Saturday.
        let weekday = ((parts.weekday ?? 1) + 5) % 7 + 1
        let minute = (parts.hour ?? 0) * 60 + (parts.minute ?? 0)
        let inHours = from <= to ? (minute >= from && minute < to) : (minute >= from || minute < to)
        // A window spanning midnight belongs to the day it started on.
        let day = from > to && minute < to ? (weekday + 5) % 7 + 1 : weekday
        return inHours && (weekdays.isEmpty || weekdays.contains(day))
    }

    var canonical: CanonicalJSON {
        ["weekdays": .array(weekdays.sorted().map { .int(Int64($0)) }), "from": .int(Int64(from)), "to": .int(Int64(to)), "time_zone": .string(timeZone.identifier)]
    }
}

/// A duration in the policy's canonical form: whole milliseconds.
private func canonicalMilliseconds(_ duration: Duration) -> CanonicalJSON {
    .int(Int64(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000))
}
