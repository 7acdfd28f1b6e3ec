import CustosCore
import NIOCore

/// Matches backend responses to the client messages that caused them, in order, so that results
/// are attributed to the right statement and a gateway-made reply (a refusal) reaches the client
/// exactly where PostgreSQL would have put it. A value type: tested without channels.
struct ResponseTracker {
    /// A statement whose result is being collected.
    struct Statement: Equatable {
        var number: Int
        var startedAt: UInt64
        var rows = 0
        var commandTag: String?
        var error: ErrorFields?
        /// The policy's `max_rows` for it.
        var rowLimit: Int?
        /// The policy's `statement_timeout` for it.
        var timeout: Duration?
        /// Set once it returned more rows than allowed: the error it ends with.
        var exceeded: ErrorFields?
        /// Set when its statement timeout fired: the error its cancellation is reported as.
        var timedOut: ErrorFields?
        /// For an Execute: the portal it runs (whose description plans the masking of its rows).
        var portal: String?
    }

    /// What the session does with a backend message, given the head statement's limits.
    enum Disposition: Equatable {
        case forward
        /// A row beyond the limit: not sent.
        case drop
        /// Sent as this error instead.
        case replace(ErrorFields)
    }

    enum Expectation: Equatable {
        /// Parse of this statement name; Bind of this portal name. Until their completion the
        /// backend may not have them: an error (or a skip to Sync) means it never did.
        case parse(String)
        case bind(String)
        case close, sync
        case describeStatement
        case describePortal(String)
        /// A Describe the gateway added before an Execute whose portal the client never
        /// described: its answer plans masking and digests, and is not sent to the client.
        case describeInternal(String)
        case execute(Statement)
        case query(Statement?)
        case functionCall
        /// An extended-protocol COMMIT in a transaction failed at the gateway, sent to the backend
        /// as a simple `ROLLBACK`: its CommandComplete answers the client's Execute, and the
        /// ReadyForQuery the simple query adds is swallowed (the client's Sync brings its own).
        case rollbackForCommit(Statement)
        case swallowReady
        /// A reply the gateway makes itself, emitted when it reaches the head of the line.
        case refusal(ErrorFields, readyForQuery: Bool)
    }

    /// What the session must do after a backend message.
    enum Effect: Equatable {
        /// A statement is complete; record its result.
        case finished(Statement)
        /// Send a gateway-made refusal now (and a ReadyForQuery with the given status, if set).
        case emit(ErrorFields, readyForQuery: BackendMessage.TransactionStatus?)
        /// A Parse or Bind failed or was skipped: the backend has no such statement or portal.
        case notCreated(statement: String?, portal: String?)
    }

    private(set) var queue = CircularBuffer<Expectation>()
    /// The transaction status of the backend's latest ReadyForQuery.
    private(set) var transactionStatus: BackendMessage.TransactionStatus = .idle
    /// The error that made the backend skip to the next Sync, and whether a statement carries it
    /// yet. An Execute forwarded after the error (it was held for its commit) fails by it too.
    private var groupError: (error: ErrorFields, attributed: Bool)?

    var isIdle: Bool { queue.isEmpty }

    /// Statements still waiting for their results (when the session ends early).
    func unfinished() -> [Statement] {
        queue.compactMap { entry in
            switch entry {
            case .execute(let statement): statement
            case .query(let statement?): statement
            case .rollbackForCommit(let statement): statement
            default: nil
            }
        }
    }

    /// Notes a message forwarded to the backend (or a refusal queued in its place).
    mutating func expect(_ expectation: Expectation, effects: inout [Effect]) {
        queue.append(expectation)
        drainRefusals(into: &effects)
    }

    /// Applies the head statement's limits to a backend message before it is accounted for:
    /// rows beyond `max_rows` are dropped and the statement ends with SQLSTATE 54000 (never a
    /// silent cut); a cancellation caused by a statement timeout is reported as such (57014).
    /// `cancel` is true the first time the backend should be told to stop.
    mutating func check(_ type: UInt8, frame: PostgresFrame) -> (disposition: Disposition, cancel: Bool) {
        if type == UInt8(ascii: "Z"), queue.first == .swallowReady {
            queue.removeFirst()
            return (.drop, false)
        }
        if type == UInt8(ascii: "T") || type == UInt8(ascii: "n"), case .describeInternal = queue.first {
            queue.removeFirst()
            return (.drop, false)
        }
        guard var statement = headStatement else { return (.forward, false) }
        switch type {
        case UInt8(ascii: "D"):
            guard let limit = statement.rowLimit, statement.rows >= limit else { return (.forward, false) }
            if statement.exceeded != nil { return (.drop, false) }
            statement.exceeded = ErrorFields(
                severity: "ERROR", sqlstate: "54000",
                message: "the statement returned more than \(limit) rows, the policy's max_rows; it was ended and no further rows were sent")
            headStatement = statement
            return (.drop, true)
        case UInt8(ascii: "C"), UInt8(ascii: "I"), UInt8(ascii: "s"), UInt8(ascii: "E"):
            if let exceeded = statement.exceeded { return (.replace(exceeded), false) }
            if type == UInt8(ascii: "E"), let timedOut = statement.timedOut,
                case .errorResponse(let fields)? = try? BackendMessage.decode(frame), fields.sqlstate == "57014"
            {
                return (.replace(timedOut), false)
            }
            return (.forward, false)
        default:
            return (.forward, false)
        }
    }

    /// Marks a statement whose timeout fired; false when it already finished.
    mutating func markTimedOut(_ number: Int, error: ErrorFields) -> Bool {
        for index in queue.indices {
            switch queue[index] {
            case .execute(var statement) where statement.number == number:
                statement.timedOut = error
                queue[index] = .execute(statement)
                return true
            case .query(var statement?) where statement.number == number:
                statement.timedOut = error
                queue[index] = .query(statement)
                return true
            default: continue
            }
        }
        return false
    }

    /// The expectation the next backend message answers.
    var head: Expectation? { queue.first }

    /// The statement whose results are arriving now.
    private(set) var headStatement: Statement? {
        get {
            switch queue.first {
            case .execute(let statement): statement
            case .query(let statement?): statement
            default: nil
            }
        }
        set {
            guard let newValue else { return }
            switch queue.first {
            case .execute: queue[queue.startIndex] = .execute(newValue)
            case .query(_?): queue[queue.startIndex] = .query(newValue)
            default: break
            }
        }
    }

    /// Accounts for one backend message.
    mutating func received(_ type: UInt8, frame: PostgresFrame, effects: inout [Effect]) {
        switch type {
        case UInt8(ascii: "D"):
            switch queue.first {
            case .execute(var statement):
                statement.rows += 1
                queue[queue.startIndex] = .execute(statement)
            case .query(var statement?):
                statement.rows += 1
                queue[queue.startIndex] = .query(statement)
            default: break
            }
        case UInt8(ascii: "1"): if case .parse = queue.first { queue.removeFirst() }
        case UInt8(ascii: "2"): if case .bind = queue.first { queue.removeFirst() }
        case UInt8(ascii: "3"): popIf(.close)
        case UInt8(ascii: "t"): break  // ParameterDescription: a RowDescription or NoData follows
        case UInt8(ascii: "T"), UInt8(ascii: "n"):
            switch queue.first {
            case .describeStatement, .describePortal, .describeInternal: queue.removeFirst()
            default: break
            }
        case UInt8(ascii: "C"), UInt8(ascii: "I"), UInt8(ascii: "s"):
            let tag: String? =
                type == UInt8(ascii: "C") ? ((try? BackendMessage.decode(frame)).flatMap { if case .commandComplete(let t) = $0 { t } else { nil } })
                : type == UInt8(ascii: "s") ? "PORTAL SUSPENDED" : nil
            switch queue.first {
            case .rollbackForCommit(var statement):
                statement.commandTag = tag
                queue[queue.startIndex] = .swallowReady
                effects.append(.finished(statement))
            case .execute(var statement):
                statement.commandTag = tag
                if let exceeded = statement.exceeded {
                    statement.error = exceeded
                    statement.commandTag = nil
                }
                queue.removeFirst()
                effects.append(.finished(statement))
            case .query(var statement?):
                statement.commandTag = tag ?? statement.commandTag
                if let exceeded = statement.exceeded {
                    statement.error = exceeded
                    statement.commandTag = nil
                }
                queue[queue.startIndex] = .query(statement)
            default: break
            }
        case UInt8(ascii: "E"):
            let fields: ErrorFields? = (try? BackendMessage.decode(frame)).flatMap { if case .errorResponse(let f) = $0 { f } else { nil } }
            failUntilSync(fields ?? ErrorFields(severity: "ERROR", sqlstate: "XX000", message: "unreadable error"), effects: &effects)
        case UInt8(ascii: "Z"):
            var body = frame.body
            if let byte = body.readInteger(as: UInt8.self), let status = BackendMessage.TransactionStatus(rawValue: byte) {
                transactionStatus = status
            }
            // Everything up to and including the Sync or Query this answers is done.
            while let head = queue.first {
                queue.removeFirst()
                switch head {
                case .sync, .functionCall: break
                case .query(let statement?): effects.append(.finished(statement))
                case .query(nil): break
                case .execute(var statement):
                    if statement.error == nil {
                        if let group = groupError {
                            statement.error = group.attributed ? Self.skipped(group.error) : group.error
                            groupError?.attributed = true
                        } else {
                            statement.error = ErrorFields(severity: "ERROR", sqlstate: "08P01", message: "no result before ReadyForQuery")
                        }
                    }
                    effects.append(.finished(statement))
                    continue
                default: continue
                }
                break
            }
            groupError = nil
        default:
            break  // notices, notifications, parameter status, copy traffic, key data
        }
        drainRefusals(into: &effects)
    }

    /// An ErrorResponse: the statement at the head failed; in the extended protocol the backend
    /// then skips everything up to the next Sync.
    private mutating func failUntilSync(_ error: ErrorFields, effects: inout [Effect]) {
        guard let head = queue.first else { return }
        if case .query(var statement?) = head {
            statement.error = statement.exceeded ?? (error.sqlstate == "57014" ? statement.timedOut : nil) ?? error
            queue[queue.startIndex] = .query(statement)
            return
        }
        if case .functionCall = head { return }
        groupError = (error, false)
        while let entry = queue.first {
            switch entry {
            case .sync, .query, .refusal: return
            case .parse(let name): effects.append(.notCreated(statement: name, portal: nil))
            case .bind(let name): effects.append(.notCreated(statement: nil, portal: name))
            case .execute(var statement):
                let own = statement.exceeded ?? (error.sqlstate == "57014" ? statement.timedOut : nil) ?? error
                statement.error = groupError!.attributed ? Self.skipped(error) : own
                groupError!.attributed = true
                effects.append(.finished(statement))
            default: break
            }
            queue.removeFirst()
        }
    }

    private mutating func drainRefusals(into effects: inout [Effect]) {
        while case .refusal(let error, let ready) = queue.first {
            queue.removeFirst()
            effects.append(.emit(error, readyForQuery: ready ? transactionStatus : nil))
        }
    }

    private mutating func popIf(_ expected: Expectation) {
        if queue.first == expected { queue.removeFirst() }
    }

    static func skipped(_ error: ErrorFields) -> ErrorFields {
        ErrorFields(severity: "ERROR", sqlstate: error.sqlstate ?? "XX000", message: "not executed: an earlier message in the pipeline failed")
    }
}
