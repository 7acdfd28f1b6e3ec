import Foundation

/// A statement held for a person's decision: who asked, exactly what (by a hash of its text and
/// parameters), on which connection, who may decide, and what they decided. An approved approval
/// is a one-time pass for exactly that statement, by that identity, on that connection, until it
/// expires.
public struct Approval: Sendable, Equatable, Codable {
    public enum Status: String, Sendable, Equatable, Codable, CaseIterable {
        case pending, approved, denied, expired, used
    }

    /// One approver's decision.
    public struct Decision: Sendable, Equatable, Codable {
        public var approver: String
        public var approverEmail: String?
        public var approverIssuer: String?
        public var verdict: Verdict
        public var comment: String?
        public var at: String

        public enum Verdict: String, Sendable, Equatable, Codable {
            case approve, deny
        }

        public init(approver: String, approverEmail: String?, approverIssuer: String? = nil, verdict: Verdict, comment: String?, at: String) {
            self.approver = approver
            self.approverEmail = approverEmail
            self.approverIssuer = approverIssuer
            self.verdict = verdict
            self.comment = comment
            self.at = at
        }

        enum CodingKeys: String, CodingKey {
            case approver, verdict, comment, at
            case approverEmail = "approver_email"
            case approverIssuer = "approver_issuer"
        }
    }

    /// Who asked.
    public struct Requester: Sendable, Equatable, Codable {
        public var subject: String
        public var email: String?
        public var issuer: String
        public var groups: [String]

        public init(_ identity: Identity) {
            subject = identity.subject
            email = identity.email
            issuer = identity.issuer
            groups = identity.groups
        }
    }

    /// What the parser found in one statement of the string, as sent.
    public struct Analysis: Sendable, Equatable, Codable {
        public var kind: String
        public var tablesRead: [String]
        public var tablesWritten: [String]
        public var flags: [String]

        public init(_ statement: StatementInfo) {
            kind = statement.kind
            tablesRead = statement.tablesRead
            tablesWritten = statement.tablesWritten
            flags = statement.flags.map(\.rawValue).sorted()
        }

        enum CodingKeys: String, CodingKey {
            case kind, flags
            case tablesRead = "tables_read"
            case tablesWritten = "tables_written"
        }
    }

    public var id: String
    public var status: Status
    public var requester: Requester
    public var connection: String
    public var sessionID: String
    /// The statement as recorded (masked like the record); approvers read this.
    public var text: String
    public var parameters: [String?]
    /// SHA-256 (hex) of the exact text and parameters as sent: what a pass releases.
    public var fingerprint: String
    /// Whether `text` or `parameters` lost a value to masking: approvers then rely on `analysis`.
    public var textMasked: Bool
    /// Each statement's kind, tables and flags from the parser, over the text as sent: a masked
    /// text can never hide what the statement does.
    public var analysis: [Analysis]
    /// The policy rule that asked for review.
    public var rule: String
    /// Groups whose members may decide; never the requester.
    public var approverGroups: [String]
    /// Approvals needed; any eligible deny denies.
    public var required: Int
    public var decisions: [Decision]
    public var createdAt: String
    /// The pass is valid until then (the TTL); a pending approval expires then too.
    public var expiresAt: String
    public var usedAt: String?

    public init(
        id: String = UUID().uuidString.lowercased(), requester: Identity, connection: String, sessionID: String, text: String, parameters: [String?],
        fingerprint: String, textMasked: Bool = false, analysis: [Analysis] = [], rule: String, approverGroups: [String], required: Int,
        createdAt: Date, ttl: TimeInterval
    ) {
        self.textMasked = textMasked
        self.analysis = analysis
        self.id = id
        self.status = .pending
        self.requester = Requester(requester)
        self.connection = connection
        self.sessionID = sessionID
        self.text = text
        self.parameters = parameters
        self.fingerprint = fingerprint
        self.rule = rule
        self.approverGroups = approverGroups
        self.required = max(1, required)
        self.decisions = []
        self.createdAt = Timestamp.format(createdAt)
        self.expiresAt = Timestamp.format(createdAt.addingTimeInterval(ttl))
    }

    enum CodingKeys: String, CodingKey {
        case id, status, requester, connection, text, parameters, fingerprint, rule, required, decisions
        case sessionID = "session_id"
        case textMasked = "text_masked"
        case analysis
        case approverGroups = "approver_groups"
        case createdAt = "created_at"
        case expiresAt = "expires_at"
        case usedAt = "used_at"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(String.self, forKey: .id)
        status = try container.decode(Status.self, forKey: .status)
        requester = try container.decode(Requester.self, forKey: .requester)
        connection = try container.decode(String.self, forKey: .connection)
        sessionID = try container.decode(String.self, forKey: .sessionID)
        text = try container.decode(String.self, forKey: .text)
        parameters = try container.decode([String?].self, forKey: .parameters)
        fingerprint = try container.decode(String.self, forKey: .fingerprint)
        // Approvals stored before these fields existed read as unmasked and unanalysed.
        textMasked = try container.decodeIfPresent(Bool.self, forKey: .textMasked) ?? false
        analysis = try container.decodeIfPresent([Analysis].self, forKey: .analysis) ?? []
        rule = try container.decode(String.self, forKey: .rule)
        approverGroups = try container.decode([String].self, forKey: .approverGroups)
        required = try container.decode(Int.self, forKey: .required)
        decisions = try container.decode([Decision].self, forKey: .decisions)
        createdAt = try container.decode(String.self, forKey: .createdAt)
        expiresAt = try container.decode(String.self, forKey: .expiresAt)
        usedAt = try container.decodeIfPresent(String.self, forKey: .usedAt)
    }

    /// The fingerprint of a statement: its exact text and parameters (NULL distinct from any text).
    public static func fingerprint(text: String, parameters: [String?]) -> String {
        let canonical: CanonicalJSON = ["text": .string(text), "parameters": .array(parameters.map(CanonicalJSON.optional))]
        return EventChain.sha256Hex(canonical.bytes)
    }

    /// Approvals so far.
    public var approvals: Int { decisions.filter { $0.verdict == .approve }.count }

    public func isExpired(at date: Date) -> Bool {
        guard let expiry = Timestamp.parse(expiresAt) else { return true }
        return date >= expiry
    }
}

/// Why a decision was refused.
public enum ApprovalError: Error, Sendable, Equatable, CustomStringConvertible {
    case notFound
    /// Requesters never approve their own statements.
    case selfApproval
    /// The approver is in none of the approval's groups.
    case notEligible
    /// Already decided, expired or used.
    case notPending(Approval.Status)
    /// This approver already decided.
    case alreadyDecided
    /// The decision could not be recorded.
    case notRecorded(String)
    /// The requester already has as many pending approvals as allowed.
    case tooManyPending

    public var description: String {
        switch self {
        case .notFound: "no such approval"
        case .selfApproval: "requesters cannot approve their own statements"
        case .notEligible: "the approver is not in a group that may decide this approval"
        case .notPending(let status): "the approval is \(status.rawValue), not pending"
        case .alreadyDecided: "this approver has already decided"
        case .notRecorded(let reason): "it could not be recorded: \(reason)"
        case .tooManyPending: "too many pending approvals for this identity (at most \(ApprovalBook.pendingLimit)); wait for decisions"
        }
    }
}
