import Foundation

/// What the policy says about one statement string (all its parts).
public struct PolicyEvaluation: Sendable, Equatable {
    /// The decision for the whole string: the strictest of its parts.
    public var decision: Decision
    /// Each part with its own decision.
    public var parts: [Part]

    public struct Part: Sendable, Equatable {
        public var statement: StatementInfo
        public var decision: Decision
    }
}

extension Policy {
    /// Decides every statement of a string; the string as a whole takes the strictest decision
    /// (deny over review over allow) and the strictest limits of its allowed parts.
    public func evaluate(_ statements: [StatementInfo], identity: Identity, connection: String, at date: Date = Date()) -> PolicyEvaluation {
        let parts = statements.map { statement in
            PolicyEvaluation.Part(statement: statement, decision: decide(statement, identity: identity, connection: connection, at: date))
        }
        guard var strictest = parts.first?.decision else {
            return PolicyEvaluation(decision: Decision(verdict: .allow, rule: "empty", policy: version), parts: [])
        }
        for part in parts.dropFirst() where part.decision.verdict.strictness > strictest.verdict.strictness {
            strictest = part.decision
        }
        if strictest.verdict == .allow {
            strictest.limits = parts.reduce(Limits()) { $0.combined(with: $1.decision.limits) }
        }
        return PolicyEvaluation(decision: strictest, parts: parts)
    }

    /// The first matching rule decides one statement; none matching denies it.
    public func decide(_ statement: StatementInfo, identity: Identity, connection: String, at date: Date) -> Decision {
        for rule in rules where rule.matches(statement, identity: identity, connection: connection, at: date) {
            switch rule.verdict {
            case .allow:
                return Decision(verdict: .allow, rule: rule.name, policy: version, limits: rule.limits)
            case .deny:
                return Decision(verdict: .deny, message: rule.message ?? "denied by policy rule \"\(rule.name)\"", rule: rule.name, policy: version)
            case .review:
                var decision = Decision(
                    verdict: .review, message: rule.message ?? "this statement requires approval (policy rule \"\(rule.name)\")", rule: rule.name,
                    policy: version)
                decision.review = rule.review
                return decision
            }
        }
        return Decision(verdict: .deny, message: defaultMessage, rule: "default", policy: version)
    }
}

extension PolicyRule {
    func matches(_ statement: StatementInfo, identity: Identity, connection: String, at date: Date) -> Bool {
        if let subjects, !subjects.contains(identity.subject), !(identity.email.map(subjects.contains) ?? false) { return false }
        if let groups, !identity.groups.contains(where: groups.contains) { return false }
        if let connections, !connections.contains(connection) { return false }
        if let kinds, !kinds.contains(statement.kind) { return false }
        if let flags, statement.flags.isDisjoint(with: flags) { return false }
        // Fail closed: allowing flagged SQL takes a rule that names the flag.
        if verdict == .allow, !statement.flags.isSubset(of: flags ?? []) { return false }
        if let readOnly, statement.readOnly != readOnly { return false }
        if let tables {
            let touched = statement.tablesRead + statement.tablesWritten
            if !touched.contains(where: { name in tables.contains { Self.name(name, matches: $0) } }) { return false }
        }
        if let functions, !statement.functions.contains(where: { name in functions.contains { Self.name(name, matches: $0) } }) {
            return false
        }
        if let time, !time.contains(date) { return false }
        return true
    }

    /// `pattern` matches a (possibly schema-qualified) name: exactly, by its unqualified part when
    /// the pattern has no schema, or by `schema.*` / `*`.
    static func name(_ name: String, matches pattern: String) -> Bool {
        if pattern == "*" || pattern == name { return true }
        let last = name.split(separator: ".").last.map(String.init) ?? name
        if !pattern.contains("."), pattern == last { return true }
        if pattern.hasSuffix(".*") {
            let schema = String(pattern.dropLast(2))
            return name.hasPrefix(schema + ".") || (schema == "public" && !name.contains("."))
        }
        if pattern.hasPrefix("public."), !name.contains("."), pattern.dropFirst(7) == name { return true }
        return false
    }
}

extension Decision.Verdict {
    /// deny > review > allow.
    var strictness: Int {
        switch self {
        case .allow: 0
        case .review: 1
        case .deny: 2
        }
    }
}
