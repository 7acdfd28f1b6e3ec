import Foundation
import Synchronization

/// A named target as the Gate sees it (the wire-level address and credential stay in the adapter).
public struct ConnectionTarget: Sendable, Equatable {
    /// The name clients use (for PostgreSQL, the startup `database`).
    public var name: String
    /// The protocol, e.g. `postgres`.
    public var kind: String
    /// Groups whose members may open sessions on it; empty means nobody.
    public var allowGroups: [String]
    /// Whether it is a disposable copy where replayed writes may run.
    public var sandbox: Bool

    public init(name: String, kind: String, allowGroups: [String], sandbox: Bool = false) {
        self.name = name
        self.kind = kind
        self.allowGroups = allowGroups
        self.sandbox = sandbox
    }
}

/// One request inside a session, with its analysis.
public struct Action: Sendable, Equatable {
    /// How the statement arrived.
    public enum Channel: String, Sendable {
        case simple, extended
    }

    public var channel: Channel
    /// The statement text exactly as the client sent it.
    public var text: String
    /// Bind parameters, as text (binary ones as `\x` hex); empty for the simple protocol.
    public var parameters: [String?]
    /// What the parser found in `text`: one entry per statement of a multi-statement string.
    public var statements: [StatementInfo]
    /// Extended protocol: the parameter type OIDs the Parse named (0 unspecified) and each
    /// parameter's format code, recorded so that a replay binds them alike.
    public var parameterTypes: [Int64] = []
    public var parameterFormats: [Int64] = []

    public init(channel: Channel, text: String, parameters: [String?] = [], statements: [StatementInfo] = []) {
        self.channel = channel
        self.text = text
        self.parameters = parameters
        self.statements = statements
    }
}

/// What the Gate decided about a session or an action.
public struct Decision: Sendable, Equatable {
    public enum Verdict: String, Sendable {
        case allow, deny, review
    }

    public var verdict: Verdict
    /// The message a refused client sees.
    public var message: String?
    /// The rule that decided.
    public var rule: String?
    /// Hash of the policy version in force.
    public var policy: String?
    /// Obligations on an allowed statement.
    public var limits: Limits
    /// The SQLSTATE a refused client gets (42501 for policy, 53400 for a rate limit).
    public var sqlstate: String
    /// For a `review` verdict: who approves and how long to hold.
    public var review: ReviewSettings?
    /// The approval that released this statement (a one-time pass).
    public var approval: String?

    public init(verdict: Verdict, message: String? = nil, rule: String? = nil, policy: String? = nil, limits: Limits = Limits(), sqlstate: String = "42501") {
        self.verdict = verdict
        self.message = message
        self.rule = rule
        self.policy = policy
        self.limits = limits
        self.sqlstate = sqlstate
    }
}

/// The protocol-agnostic checkpoint every session and action passes through. Adapters call it
/// through this protocol only.
public protocol GateProtocol: Sendable {
    /// May this identity open a session on this connection?
    func authorize(_ identity: Identity, on connection: ConnectionTarget) -> Decision
    /// What the statements in `text` are (a session keeps this for a prepared statement).
    func analyze(_ text: String) -> [StatementInfo]
    /// What happens to this action? A `review` verdict is where approvals park the action in the
    /// session's "awaiting decision" stage.
    func decide(_ action: Action, by identity: Identity, on connection: ConnectionTarget) -> Decision
    /// What this identity gets masked on this connection, under the policy in force.
    func masking(for identity: Identity, on connection: ConnectionTarget) -> MaskingProfile
    /// The analyzer's literal uses of `sql` (see ``StatementAnalyzer/literalUses(_:)``).
    func literalUses(_ sql: String) -> [LiteralUse]
    /// The analyzer's COPY description of `sql`.
    func copyInfo(_ sql: String) -> CopyInfo?
}

/// The Gate: connection access by group, then the statement policy (docs/policy.md), with the
/// per-identity rate limits the policy sets. The policy can be replaced while sessions run.
public final class Gate: GateProtocol {
    private let analyzer: any StatementAnalyzer
    private let current: Mutex<Policy>
    private let rates = RateLimiter()
    private let now: @Sendable () -> Date

    public init(policy: Policy, analyzer: any StatementAnalyzer, now: @escaping @Sendable () -> Date = { Date() }) {
        self.analyzer = analyzer
        self.current = Mutex(policy)
        self.now = now
    }

    /// The policy in force.
    public var policy: Policy { current.withLock { $0 } }

    /// Puts a new policy in force for every later decision, in every session.
    public func reload(_ policy: Policy) {
        current.withLock { $0 = policy }
    }

    public func authorize(_ identity: Identity, on connection: ConnectionTarget) -> Decision {
        let version = policy.version
        if identity.groups.contains(where: connection.allowGroups.contains) {
            return Decision(verdict: .allow, rule: "connections.\(connection.name).allow_groups", policy: version)
        }
        return Decision(
            verdict: .deny, message: "identity \"\(identity.subject)\" is not allowed on connection \"\(connection.name)\"",
            rule: "connections.\(connection.name).allow_groups", policy: version, sqlstate: "28000")
    }

    public func analyze(_ text: String) -> [StatementInfo] {
        analyzer.analyze(text)
    }

    public func masking(for identity: Identity, on connection: ConnectionTarget) -> MaskingProfile {
        policy.masking.profile(for: identity, connection: connection.name)
    }

    public func literalUses(_ sql: String) -> [LiteralUse] {
        analyzer.literalUses(sql)
    }

    public func copyInfo(_ sql: String) -> CopyInfo? {
        analyzer.copyInfo(sql)
    }

    public func decide(_ action: Action, by identity: Identity, on connection: ConnectionTarget) -> Decision {
        let date = now()
        let policy = self.policy
        if action.statements.contains(where: { $0.flags.contains(.lexing) }) {
            // Not the policy's to allow: every later decision of the session rests on reading SQL
            // as the backend does.
            return Decision(
                verdict: .deny,
                message: "Custos reads SQL with standard_conforming_strings on and client_encoding UTF8; a statement that changes either is refused",
                policy: policy.version, sqlstate: "0A000")
        }
        var decision = policy.evaluate(action.statements, identity: identity, connection: connection.name, at: date).decision
        if decision.verdict == .allow, let rate = decision.limits.ratePerSecond, let rule = decision.rule,
            !rates.admit(key: "\(identity.issuer)|\(identity.subject)|\(rule)", rate: rate, at: date)
        {
            decision = Decision(
                verdict: .deny, message: "rate limit exceeded: at most \(rate) statements per second under policy rule \"\(rule)\"",
                rule: rule, policy: decision.policy, sqlstate: "53400")
        }
        return decision
    }
}

/// Token buckets per key: `rate` statements per second, with a burst of one second's worth.
final class RateLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var updated: Date
    }

    private let buckets = Mutex<[String: Bucket]>([:])

    func admit(key: String, rate: Double, at date: Date) -> Bool {
        buckets.withLock { buckets in
            let burst = max(1, rate)
            var bucket = buckets[key] ?? Bucket(tokens: burst, updated: date)
            bucket.tokens = min(burst, bucket.tokens + max(0, date.timeIntervalSince(bucket.updated)) * rate)
            bucket.updated = date
            let admitted = bucket.tokens >= 1
            if admitted { bucket.tokens -= 1 }
            buckets[key] = bucket
            if buckets.count > 100_000 { buckets.removeAll() }  // bounded: a flood of identities cannot grow it forever
            return admitted
        }
    }
}
