/// Where sessions send their events. The store implements it; sessions never see the store.
///
/// `append` records before it returns (a write into the page cache, never a wait on another
/// thread); `appendLater` only queues. Events keep the order in which they were given.
public protocol Recorder: Sendable {
    /// Records a draft at once; `completion` runs once it is durable (or failed to be), on the
    /// caller's thread before `append` returns or later on another (callers must not hold a lock
    /// `completion` takes). A write-ahead session forwards a statement only then.
    func append(_ draft: EventDraft, completion: @escaping @Sendable (Result<Void, RecorderError>) -> Void)

    /// Queues a draft nobody waits for (a result, a session's close): it is written with the
    /// next prompt event, or after a short delay, so that it costs no write of its own.
    func appendLater(_ draft: EventDraft)
}

/// Why an event could not be recorded.
public struct RecorderError: Error, Sendable, CustomStringConvertible {
    /// A short reason, safe to log (never event contents).
    public var reason: String

    public init(reason: String) {
        self.reason = reason
    }

    public var description: String { "recording failed: \(reason)" }
}

/// How a write-ahead or async session treats the record.
public enum RecordingMode: String, Sendable {
    /// A statement is forwarded only after its event is committed.
    case writeAhead = "write-ahead"
    /// A statement is forwarded at once; its event is committed later (bounded loss window).
    case async
}

/// How an event changes the searchable index of sessions, applied by the store in the same
/// transaction as the event.
public enum SessionIndexUpdate: Sendable, Equatable {
    /// A session began (or was refused: then `outcome` is already final).
    case open(SessionSummary)
    /// The session ended.
    case close(endedAt: String, outcome: String, reason: String?, sqlstate: String?)
}

/// The searchable facts of one session.
public struct SessionSummary: Sendable, Equatable, Codable {
    public var id: String
    public var connection: String?
    public var database: String
    public var startupUser: String
    public var subject: String?
    public var email: String?
    public var issuer: String?
    public var groups: [String]
    public var clientAddress: String
    public var applicationName: String?
    public var startedAt: String
    public var endedAt: String?
    public var outcome: String
    public var reason: String?
    public var sqlstate: String?
    /// Statements recorded so far (counted from the events when read).
    public var statementCount: Int

    public init(
        id: String, connection: String?, database: String, startupUser: String, subject: String?, email: String?, issuer: String?,
        groups: [String], clientAddress: String, applicationName: String?, startedAt: String, endedAt: String? = nil,
        outcome: String, reason: String? = nil, sqlstate: String? = nil, statementCount: Int = 0
    ) {
        self.id = id
        self.connection = connection
        self.database = database
        self.startupUser = startupUser
        self.subject = subject
        self.email = email
        self.issuer = issuer
        self.groups = groups
        self.clientAddress = clientAddress
        self.applicationName = applicationName
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.outcome = outcome
        self.reason = reason
        self.sqlstate = sqlstate
        self.statementCount = statementCount
    }

    enum CodingKeys: String, CodingKey {
        case id, connection, database, subject, email, issuer, groups, outcome, reason, sqlstate
        case startupUser = "startup_user"
        case clientAddress = "client_address"
        case applicationName = "application_name"
        case startedAt = "started_at"
        case endedAt = "ended_at"
        case statementCount = "statement_count"
    }
}
