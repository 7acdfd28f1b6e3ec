import Foundation

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

/// One request inside a session.
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

    public init(channel: Channel, text: String, parameters: [String?] = []) {
        self.channel = channel
        self.text = text
        self.parameters = parameters
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

    public init(verdict: Verdict, message: String? = nil, rule: String? = nil, policy: String? = nil, limits: Limits = Limits(), sqlstate: String = "42501") {
        self.verdict = verdict
        self.message = message
        self.rule = rule
        self.policy = policy
        self.limits = limits
        self.sqlstate = sqlstate
    }
}

/// The protocol-agnostic checkpoint every session and action passes through.
///
/// Adapters call it through this protocol only; the policy issue replaces the body of `decide`
/// without touching them. `decide` is synchronous today: a `review` verdict is where a later
/// issue parks the action in the session's "awaiting decision" state.
public protocol GateProtocol: Sendable {
    /// May this identity open a session on this connection?
    func authorize(_ identity: Identity, on connection: ConnectionTarget) -> Decision
    /// What happens to this action?
    func decide(_ action: Action, by identity: Identity, on connection: ConnectionTarget) -> Decision
}

/// The Gate of the spine: connection access by group; every statement of an admitted session is
/// allowed (statement policy arrives with the policy issue).
public struct Gate: GateProtocol {
    /// Recorded as the policy of every decision until a policy file exists.
    public static let policyVersion = "none"

    public init() {}

    public func authorize(_ identity: Identity, on connection: ConnectionTarget) -> Decision {
        if identity.groups.contains(where: connection.allowGroups.contains) {
            return Decision(verdict: .allow, rule: "connections.\(connection.name).allow_groups", policy: Self.policyVersion)
        }
        return Decision(
            verdict: .deny, message: "identity \"\(identity.subject)\" is not allowed on connection \"\(connection.name)\"",
            rule: "connections.\(connection.name).allow_groups", policy: Self.policyVersion)
    }

    public func decide(_ action: Action, by identity: Identity, on connection: ConnectionTarget) -> Decision {
        Decision(verdict: .allow, rule: "connections.\(connection.name).allow_groups", policy: Self.policyVersion)
    }
}
