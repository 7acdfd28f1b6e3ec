import CustosCore
import NIOCore

/// A statement prepared with Parse, analysed once.
struct Prepared {
    var text: String
    var statements: [StatementInfo]
    /// The parameter type OIDs the Parse named (recorded, so that a replay binds them alike).
    var parameterTypes: [UInt32] = []

    /// A statement the session never saw prepared (e.g. by SQL-level PREPARE): its effect is unknown.
    static func unknown(_ name: String) -> Prepared {
        let text = "<prepared statement \"\(name)\">"
        return Prepared(text: text, statements: [StatementInfo(kind: "execute", flags: [.opaque], readOnly: false, text: text)])
    }

    static func unknown(portal: String) -> Action {
        let text = "<unknown portal \"\(portal)\">"
        return Action(channel: .extended, text: text, statements: [StatementInfo(kind: "execute", flags: [.opaque], readOnly: false, text: text)])
    }
}

/// A statement parked until its decision and write-ahead commit complete. While one is held the
/// session reads nothing more from the client, and what was already read queues behind it.
struct HeldStatement {
    /// What the statement is waiting for: a person's decision (an approval), then its
    /// write-ahead commit. A statement the policy allows passes `awaitingDecision` at once.
    enum Stage: Equatable {
        case awaitingDecision
        case awaitingCommit
    }

    var stage: Stage
    var frame: PostgresFrame
    var statement: ResponseTracker.Statement?
    var action: ResponseTracker.Expectation?
    /// While awaiting a person's decision: the approval, its hold timer and decision callback.
    var approval: (id: String, timer: Scheduled<Void>?, waiter: Int?)?
}

extension ClientSession: BackendDelegate {
    // MARK: Client → backend

    /// A client message while proxying. Order is kept: while a statement is held, everything
    /// after it queues behind it.
    func clientFrame(_ frame: PostgresFrame) {
        if inputPaused || !queued.isEmpty {
            queued.append(frame)
            return
        }
        process(frame)
    }

    func drainQueue() {
        while !inputPaused, !isClosed, let frame = queued.popFirst() {
            process(frame)
        }
        flushBackend()
        flushClient()
        requestClientRead()
    }

    private func process(_ frame: PostgresFrame) {
        if skippingUntilSync {
            guard frame.type == UInt8(ascii: "S") else { return }
            skippingUntilSync = false
        }
        let message: FrontendMessage
        switch frame.type {
        case UInt8(ascii: "d"), UInt8(ascii: "c"), UInt8(ascii: "f"), UInt8(ascii: "H"):
            return forward(frame, expecting: nil)  // COPY data and Flush pass untouched
        default:
            do {
                message = try FrontendMessage.decode(frame)
            } catch where error.reason == .badText {
                // As PostgreSQL answers text its database encoding rejects: an error, and the session goes on.
                return refuseStatement(
                    ErrorFields(severity: "ERROR", sqlstate: "22021", message: "Custos reads SQL as UTF-8: the statement text holds an invalid byte sequence"),
                    simple: frame.type == UInt8(ascii: "Q"))
            } catch {
                return refuse(sqlstate: "08P01", message: "protocol violation: \(error)")
            }
        }
        switch message {
        case .query(let text):
            let action = Action(channel: .simple, text: text, statements: resolvePrepared(gateway.gate.analyze(text)))
            submit(frame, action: action, expectation: { .query($0) })
        case .parse(let parse):
            // Analysed once here; every Execute of it reuses the analysis. A named statement that
            // exists cannot be redefined (the backend refuses the Parse and keeps the old one):
            // its name becomes opaque rather than taking the new text, which the backend never ran.
            if !parse.statement.isEmpty, preparedStatements[exact: parse.statement] != nil {
                preparedStatements[exact: parse.statement] = Prepared.unknown(parse.statement)
            } else {
                preparedStatements[exact: parse.statement] = Prepared(
                    text: parse.query, statements: resolvePrepared(gateway.gate.analyze(parse.query)), parameterTypes: parse.parameterTypes)
            }
            forward(frame, expecting: .parse(parse.statement))
        case .bind(let bind):
            let prepared = preparedStatements[exact: bind.statement] ?? Prepared.unknown(bind.statement)
            let parameters = bind.parameters.enumerated().map { index, value in Self.render(value, format: bind.format(of: index)) }
            if !bind.portal.isEmpty, portals[exact: bind.portal] != nil {
                portals[exact: bind.portal] = Prepared.unknown(portal: bind.portal)  // the backend refuses a second Bind of a named portal
            } else {
                var action = Action(channel: .extended, text: prepared.text, parameters: parameters, statements: prepared.statements)
                action.parameterTypes = prepared.parameterTypes.map(Int64.init)
                action.parameterFormats = bind.parameters.indices.map { Int64(bind.format(of: $0)) }
                portals[exact: bind.portal] = action
            }
            describedPortals.remove(ExactText(bind.portal))
            forward(frame, expecting: .bind(bind.portal))
        case .describe(let target):
            if target.kind == UInt8(ascii: "S") {
                forward(frame, expecting: .describeStatement)
            } else {
                describedPortals.insert(ExactText(target.name))
                forward(frame, expecting: .describePortal(target.name))
            }
        case .execute(let portal, _):
            let action = portals[exact: portal] ?? Prepared.unknown(portal: portal)
            submit(frame, action: action) { statement in
                var statement = statement!
                statement.portal = portal
                return .execute(statement)
            }
        case .close(let target):
            if target.kind == UInt8(ascii: "S") {
                preparedStatements[exact: target.name] = nil
            } else {
                portals[exact: target.name] = nil
                portalPlans[exact: target.name] = nil
                describedPortals.remove(ExactText(target.name))
            }
            forward(frame, expecting: .close)
        case .sync:
            forward(frame, expecting: .sync)
        case .terminate:
            let pooled = releaseBackend()
            if pooled == nil {
                forward(frame, expecting: nil)
                flushBackend()
            }
            finish(outcome: "closed", reason: nil, sqlstate: nil)
            pooled?.reset()  // after finish, which detaches the relay from this session
        case .functionCall:
            refuseStatement(
                ErrorFields(severity: "ERROR", sqlstate: "0A000", message: "fast-path function calls are not supported through Custos"),
                simple: true)
        case .password:
            refuse(sqlstate: "08P01", message: "protocol violation: password message after authentication")
        case .copyData, .copyDone, .copyFail, .flush:
            forward(frame, expecting: nil)
        }
    }

    /// A statement: the Gate decides; an allowed one is recorded, then (write-ahead) forwarded only
    /// once its event is committed.
    private func submit(_ frame: PostgresFrame, action: Action, expectation: @escaping (ResponseTracker.Statement?) -> ResponseTracker.Expectation) {
        guard let identity, let target else { return }
        let simple = action.channel == .simple
        if simple, action.statements.isEmpty {
            return forward(frame, expecting: .query(nil))  // empty query (blanks, comments): nothing runs
        }
        var frame = frame
        var expectation = expectation
        held = HeldStatement(stage: .awaitingDecision, frame: frame)
        var decision: Decision
        if abortedBlock {
            // The client's transaction failed at the gateway while the backend's did not: answer as
            // PostgreSQL would in a failed transaction, and turn COMMIT into ROLLBACK.
            decision = Self.inAbortedBlock(action)
            if decision.verdict == .allow, action.statements.first?.kind == "rollback_to" {
                abortClearsAtReady = true
            }
            if decision.verdict == .allow, action.statements.first?.kind == "commit" {
                var body = ByteBuffer()
                body.writeCString("ROLLBACK")
                frame = PostgresFrame(type: UInt8(ascii: "Q"), body: body)
                if !simple { expectation = { .rollbackForCommit($0!) } }
            }
        } else {
            decision = gateway.gate.decide(action, by: identity, on: target.connection)
        }
        held = nil
        statementCount += 1
        maskingProfile = gateway.gate.masking(for: identity, on: target.connection)
        var heldFor: ReviewSettings?
        if decision.verdict == .review, let review = decision.review, !review.approvers.isEmpty, let approvals = gateway.approvals {
            let fingerprint = Approval.fingerprint(text: action.text, parameters: action.parameters)
            if let pass = approvals.takePass(
                for: identity, connection: target.connection.name, fingerprint: fingerprint, rule: decision.rule, sessionID: events.sessionID)
            {
                // Approved earlier, for exactly this statement: it runs, once.
                var released = Decision(verdict: .allow, rule: decision.rule, policy: decision.policy)
                released.approval = pass.id
                decision = released
            } else {
                heldFor = review
            }
        }
        let recorded = recordedForm(of: action)
        let draft = events.statement(number: statementCount, action: action, decision: decision, recorded: recorded)
        if let review = heldFor {
            // Planned as an allowed statement would be, so that once approved its COPY output is masked.
            if let refusal = planCopies(action) {
                gateway.recorder.appendLater(draft)
                return refuseStatement(refusal, simple: simple)
            }
            trackPrepared(action.statements, number: statementCount)
            let statement = ResponseTracker.Statement(number: statementCount, startedAt: 0)
            return holdForApproval(frame, action: action, recorded: recorded, decision: decision, review: review, draft: draft, pending: (statement, expectation(statement)))
        }
        if decision.verdict == .allow, let refusal = planCopies(action) {
            gateway.recorder.appendLater(draft)
            return refuseStatement(refusal, simple: simple)
        }
        guard decision.verdict == .allow else {
            gateway.recorder.appendLater(draft)
            let message = decision.message ?? (decision.verdict == .review ? "statement requires approval" : "statement denied by policy")
            var error = ErrorFields(severity: "ERROR", sqlstate: decision.sqlstate, message: message)
            if decision.verdict == .review {
                error.fields.append((UInt8(ascii: "H"), "the policy rule names no approvers, so nobody can approve this statement"))
            }
            return refuseStatement(error, simple: simple)
        }
        trackPrepared(action.statements, number: statementCount)
        let statement = ResponseTracker.Statement(
            number: statementCount, startedAt: 0, rowLimit: decision.limits.maxRows, timeout: decision.limits.statementTimeout)
        switch gateway.settings.recordingMode {
        case .async:
            gateway.recorder.appendLater(draft)
            forward(frame, expecting: expectation(statement))
        case .writeAhead:
            held = HeldStatement(stage: .awaitingCommit, frame: frame, statement: statement, action: expectation(statement))
            let loop = context.eventLoop
            let bound = NIOLoopBound(self, eventLoop: loop)
            inlineCommit = .awaiting
            gateway.recorder.append(draft) { result in
                if loop.inEventLoop {
                    bound.value.committed(result)
                } else {
                    loop.execute { bound.value.committed(result) }
                }
            }
            if case .done(let result) = inlineCommit {
                // Recorded before `append` returned (the journal): the statement goes on in this
                // same read, with no task hop; whoever called us drains and flushes.
                inlineCommit = .none
                release(result)
            } else {
                inlineCommit = .none
            }
        }
    }

    private func committed(_ result: Result<Void, RecorderError>) {
        if case .awaiting = inlineCommit {
            inlineCommit = .done(result)
            return
        }
        release(result)
        drainQueue()
    }

    /// The held statement's write-ahead record is done: forwarded, or refused when it failed.
    private func release(_ result: Result<Void, RecorderError>) {
        guard let parked = held, parked.stage == .awaitingCommit, !isClosed else { return }
        held = nil
        switch result {
        case .success:
            forward(parked.frame, expecting: parked.action)
        case .failure(let error):
            logger.error("store failure; statement refused", metadata: ["error": "\(error)"])
            refuseStatement(
                ErrorFields(severity: "ERROR", sqlstate: "58030", message: "Custos cannot record this statement: the store is unavailable; it was not run"),
                simple: parked.frame.type == UInt8(ascii: "Q"))
        }
    }

    /// Answers a statement in the backend's place, in order with the responses still due.
    func refuseStatement(_ error: ErrorFields, simple: Bool) {
        var effects: [ResponseTracker.Effect] = []
        tracker.expect(.refusal(error, readyForQuery: simple), effects: &effects)
        if !simple { skippingUntilSync = true }
        apply(effects)
    }

    func forward(_ frame: PostgresFrame, expecting expectation: ResponseTracker.Expectation?) {
        if var expectation {
            switch expectation {
            case .execute(var statement):
                if let portal = statement.portal, !describedPortals.contains(ExactText(portal)) {
                    // Masking and digests need the portal's columns: ask for them first.
                    describedPortals.insert(ExactText(portal))
                    var body = ByteBuffer()
                    body.writeInteger(UInt8(ascii: "P"))
                    body.writeCString(portal)
                    forward(PostgresFrame(type: UInt8(ascii: "D"), body: body), expecting: .describeInternal(portal))
                }
                statement.startedAt = NIODeadline.now().uptimeNanoseconds
                expectation = .execute(statement)
                scheduleTimeout(statement)
                captures[statement.number] = ResultCapture(key: gateway.digestKey, sampleLimit: gateway.settings.sampleRows)
            case .query(var statement?):
                statement.startedAt = NIODeadline.now().uptimeNanoseconds
                expectation = .query(statement)
                scheduleTimeout(statement)
                captures[statement.number] = ResultCapture(key: gateway.digestKey, sampleLimit: gateway.settings.sampleRows)
            default: break
            }
            var effects: [ResponseTracker.Effect] = []
            tracker.expect(expectation, effects: &effects)
            apply(effects)
        }
        backend?.write(frame.raw, promise: nil)
        backendNeedsFlush = true
    }

    private func apply(_ effects: [ResponseTracker.Effect]) {
        for effect in effects {
            switch effect {
            case .finished(let statement):
                recordResult(statement, error: statement.error)
            case .notCreated(let statement, let portal):
                // Never created at the backend: whatever runs under that name later is unknown.
                if let statement { preparedStatements[exact: statement] = Prepared.unknown(statement) }
                if let portal {
                    portals[exact: portal] = Prepared.unknown(portal: portal)
                    describedPortals.remove(ExactText(portal))
                }
            case .emit(let error, let ready):
                // Any error inside a transaction block fails the block, as in PostgreSQL.
                if tracker.transactionStatus != .idle { abortedBlock = true }
                send(.errorResponse(error), flush: false)
                if let ready { send(.readyForQuery(abortedBlock ? .failed : ready), flush: false) }
            }
        }
    }

    /// Cancels the statement at the backend if it still runs when its policy timeout expires.
    private func scheduleTimeout(_ statement: ResponseTracker.Statement) {
        guard let timeout = statement.timeout else { return }
        let number = statement.number
        context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(timeout)) { [weak self] in
            guard let self, !self.isClosed else { return }
            let error = ErrorFields(
                severity: "ERROR", sqlstate: "57014",
                message: "canceling statement due to statement timeout (the policy allows \(timeout.formatted()))")
            if self.tracker.markTimedOut(number, error: error) { self.cancelBackendQuery() }
        }
    }

    /// Cancels the running statement at the backend. PostgreSQL acts on a cancel whenever it
    /// arrives: one still on its way when the statement has ended would cancel the client's next,
    /// so client input waits until the server has taken it.
    func cancelBackendQuery() {
        guard let cancelKey, let entry = gateway.cancelKeys.lookup(cancelKey) else { return }
        cancelsInFlight += 1
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        Self.sendCancel(entry, on: context.eventLoop).whenComplete { _ in
            let session = bound.value
            session.cancelsInFlight -= 1
            if session.cancelsInFlight == 0, !session.isClosed { session.drainQueue() }
        }
    }

    func recordResult(_ statement: ResponseTracker.Statement, error: ErrorFields?) {
        let elapsed = (NIODeadline.now().uptimeNanoseconds &- statement.startedAt) / 1000
        var outcome = SessionEvents.Outcome(
            commandTag: statement.commandTag, rows: statement.commandTag.flatMap(Self.rowCount) ?? statement.rows,
            errorCode: error?.sqlstate, errorMessage: error?.message, durationMicros: statement.startedAt == 0 ? 0 : Int64(elapsed))
        copyInfos[statement.number] = nil
        if error == nil { preparedSucceeded(statement.number) } else { pendingPrepares[statement.number] = nil }
        if let capture = captures.removeValue(forKey: statement.number) {
            // A result with no rows still names its columns.
            if capture.columns.isEmpty, let plan = statement.portal.flatMap({ portalPlans[exact: $0] }) { capture.describe(plan) }
            outcome.columns = capture.columns
            outcome.sample = capture.sample
            outcome.digest = (capture.digest.orderedHex, capture.digest.multisetHex)
        }
        if let error, let masked = ErrorMasking.mask(error, profile: maskingProfile, masker: gateway.masker) {
            outcome.errorMessage = masked.message
        }
        // As for statement text: secrets never reach the record, whatever the identity's masking.
        if let message = outcome.errorMessage {
            let (masked, changed) = gateway.masker.maskDetected(message, strategies: [.secret: .redact])
            if changed { outcome.errorMessage = masked ?? "[redacted]" }
        }
        gateway.recorder.appendLater(events.result(number: statement.number, outcome: outcome))
    }

    func flushBackend() {
        if backendNeedsFlush {
            backendNeedsFlush = false
            backend?.flush()
        }
    }

    func requestClientRead() {
        guard !isClosed, !inputPaused, backendWritable else { return }
        context.read()
    }

    // MARK: Backend → client

    func backendFrame(_ frame: PostgresFrame) {
        guard case .proxying = phase else { return backendStartupFrame(frame) }
        if pausedFrames != nil {
            pausedFrames!.append(frame)
            return
        }
        if frame.type == UInt8(ascii: "S"), case .parameterStatus(let name, let value)? = try? BackendMessage.decode(frame),
            !GuardedSettings.isSafe(name, value: value)
        {
            // Changed under the gateway (a function calling set_config, say): what follows would be
            // read differently from the analysis, so the session ends here, failing closed.
            logger.warning("backend session changed how it reads SQL; session ended", metadata: ["setting": "\(name)", "value": "\(value)"])
            return terminate(sqlstate: "0A000", message: Self.lexingRefusal(name, value), outcome: "error", reason: Self.lexingRefusal(name, value))
        }
        guard prepareResult(frame) else { return }
        var frame = frame
        var batched = false
        let (disposition, cancel) = tracker.check(frame.type, frame: frame)
        if cancel { cancelBackendQuery() }
        switch disposition {
        case .forward:
            switch maskResult(frame) {
            case .unchanged: break
            case .replaced(let masked): frame = masked
            case .batched: batched = true
            }
            if isClosed { return }
        case .drop:
            if frame.type != UInt8(ascii: "D") { rowContext = nil }
            return
        case .replace(let error):
            rowContext = nil
            // A completed statement reported as failed fails the client's transaction block while
            // the backend's stays healthy: emulate it, as for a refusal.
            if frame.type != UInt8(ascii: "E"), tracker.transactionStatus != .idle { abortedBlock = true }
            var buffer = context.channel.allocator.buffer(capacity: 128)
            BackendMessage.errorResponse(error).encode(into: &buffer)
            var body = buffer
            body.moveReaderIndex(forwardBy: 5)
            frame = PostgresFrame(type: UInt8(ascii: "E"), body: body, raw: buffer)
        }
        var effects: [ResponseTracker.Effect] = []
        tracker.received(frame.type, frame: frame, effects: &effects)
        if frame.type == UInt8(ascii: "Z"), abortedBlock {
            if abortClearsAtReady || tracker.transactionStatus == .idle {
                abortedBlock = false
                abortClearsAtReady = false
                writeToClient(frame.raw)
            } else {
                send(.readyForQuery(.failed), flush: false)  // the backend's block is healthy; the client's is not
            }
        } else if !batched {
            writeToClient(frame.raw)
        }
        apply(effects)
        if frame.type == UInt8(ascii: "Z"), pendingExpiry, tracker.isIdle, held == nil {
            flushClient()
            endForExpiry()
        }
    }

    func backendReadComplete() {
        flushClient()
        if pausedFrames != nil { return }  // reading resumes once the catalog has answered
        if context.channel.isWritable {
            backend?.read()
        } else {
            backendReadPending = true
        }
    }

    func backendClosed() {
        guard !isClosed else { return }
        if case .proxying = phase {
            logger.warning("backend connection lost")
            terminate(sqlstate: "08006", message: "the backend connection was lost", outcome: "error", reason: "backend connection lost")
        } else {
            refuse(sqlstate: "08001", message: "the backend of connection \"\(client.database)\" closed the connection")
        }
    }

    func backendFailed(_ error: any Error) {
        logger.warning("backend connection error", metadata: ["error": "\(error)"])
        backendClosed()
    }

    func backendWritabilityChanged(_ writable: Bool) {
        backendWritable = writable
        if writable { requestClientRead() }
    }

    // MARK: Helpers

    /// In a transaction that failed at the gateway only ROLLBACK, ROLLBACK TO SAVEPOINT and COMMIT
    /// (which becomes ROLLBACK, as PostgreSQL reports it) may pass.
    static func inAbortedBlock(_ action: Action) -> Decision {
        let kinds = action.statements.map(\.kind)
        if kinds.count == 1, ["rollback", "rollback_to", "commit"].contains(kinds[0]) {
            return Decision(verdict: .allow, rule: "transaction.aborted", policy: nil)
        }
        return Decision(
            verdict: .deny, message: "current transaction is aborted, commands ignored until end of transaction block",
            rule: "transaction.aborted", policy: nil, sqlstate: "25P02")
    }

    /// The row count PostgreSQL puts in a command tag (`SELECT 3`, `INSERT 0 5`, `COPY 7`).
    static func rowCount(_ tag: String) -> Int? {
        let parts = tag.split(separator: " ")
        guard parts.count >= 2, let last = parts.last, let count = Int(last) else { return nil }
        return count
    }

    static func render(_ value: ByteBuffer?, format: Int16) -> String? {
        guard let value else { return nil }
        if format == 0 { return String(buffer: value) }
        return "\\x" + value.readableBytesView.map { String(format: "%02x", $0) }.joined()
    }
}

extension TimeAmount {
    /// A policy duration as an event-loop delay.
    init(_ duration: Duration) {
        self = .nanoseconds(duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }
}
