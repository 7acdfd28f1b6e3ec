import CustosCore
import Foundation
import NIOCore

/// Statements a `review` rule holds for a person's decision. The client's ordinary driver just
/// waits: it gets a NoticeResponse naming the approval, then the statement's result (approved),
/// or an error (denied, or still pending when the hold timeout passes). Everything the client
/// sent after the statement queues behind it.
extension ClientSession {
    func holdForApproval(
        _ frame: PostgresFrame, action: Action, recorded: SessionEvents.RecordedStatement, decision: Decision, review: ReviewSettings, draft: EventDraft,
        pending: (statement: ResponseTracker.Statement, expectation: ResponseTracker.Expectation)
    ) {
        guard let identity, let target, let approvals = gateway.approvals else { return }
        let approval = Approval(
            requester: identity, connection: target.connection.name, sessionID: events.sessionID, text: recorded.text, parameters: recorded.parameters,
            fingerprint: Approval.fingerprint(text: action.text, parameters: action.parameters), textMasked: recorded.masked,
            analysis: action.statements.map(Approval.Analysis.init), rule: decision.rule ?? "?",
            approverGroups: review.approvers, required: review.required, createdAt: Date(), ttl: Self.seconds(review.ttl))
        // The statement's event (verdict review) goes first; the request's prompt commit carries it.
        gateway.recorder.appendLater(draft)
        held = HeldStatement(stage: .awaitingDecision, frame: frame, statement: pending.statement, action: pending.expectation, approval: (approval.id, nil, nil))
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let id = approval.id
        approvals.request(approval) { result in
            loop.execute { bound.value.approvalRequested(result, id: id, review: review, simple: frame.type == UInt8(ascii: "Q")) }
        }
    }

    private func approvalRequested(_ result: Result<Approval, ApprovalError>, id: String, review: ReviewSettings, simple: Bool) {
        // The hold may have ended meanwhile (cancel) and another begun: answer only our own.
        guard !isClosed, var parked = held, parked.approval?.id == id else { return }
        guard case .success(let approval) = result, let approvals = gateway.approvals else {
            held = nil
            let error: ErrorFields
            if case .failure(.tooManyPending) = result {
                error = ErrorFields(
                    severity: "ERROR", sqlstate: "53400",
                    message: "too many statements of yours are waiting for approval (at most \(ApprovalBook.pendingLimit)); this one was not run")
            } else {
                error = ErrorFields(
                    severity: "ERROR", sqlstate: "58030", message: "Custos cannot record this approval request: the store is unavailable; the statement was not run")
            }
            if let statement = parked.statement { recordResult(statement, error: error) }
            refuseStatement(error, simple: simple)
            return drainQueue()
        }
        var notice = ErrorFields(
            severity: "NOTICE", sqlstate: "00000",
            message: "Custos: this statement needs approval \(id) (policy rule \"\(approval.rule)\"); waiting up to \(Self.spoken(review.holdTimeout)) for a decision",
            hint: "an approver (group \(approval.approverGroups.joined(separator: ", "))) runs: custos approvals approve \(id)")
        notice.fields.append((UInt8(ascii: "D"), "approval id: \(id)"))
        send(.noticeResponse(notice), flush: true)
        let timer = context.eventLoop.assumeIsolated().scheduleTask(in: TimeAmount(review.holdTimeout)) { [weak self] () -> Void in
            self?.holdTimedOut(id, ttl: review.ttl, simple: simple)
        }
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let waiter = approvals.wait(for: id) { settled in
            loop.execute { bound.value.approvalSettled(settled, simple: simple) }
        }
        // `wait` may have settled it already (and then `held` changed): keep the handles only if not.
        guard held?.approval?.id == id else {
            timer.cancel()
            return
        }
        parked.approval = (id, timer, waiter)
        held = parked
    }

    private func approvalSettled(_ approval: Approval, simple: Bool) {
        guard !isClosed, let parked = held, parked.stage == .awaitingDecision, parked.approval?.id == approval.id else { return }
        parked.approval?.timer?.cancel()
        held = nil
        switch approval.status {
        case .approved:
            // The use is recorded before the statement runs, so a crash cannot leave the pass
            // looking unused; a pass taken meanwhile (or expired) releases nothing here.
            let loop = context.eventLoop
            let bound = NIOLoopBound(self, eventLoop: loop)
            let used = gateway.approvals?.use(approval.id, sessionID: events.sessionID) { result in
                loop.execute { bound.value.useRecorded(result, parked: parked, simple: simple) }
            }
            if used == nil {
                let error = ErrorFields(severity: "ERROR", sqlstate: "42501", message: "approval \(approval.id) was used or expired before this statement could run")
                recordHeldOutcome(parked, error: error)
                refuseStatement(error, simple: simple)
            } else {
                // Nothing runs until the use is recorded: keep the statement parked meanwhile.
                var waiting = parked
                waiting.stage = .awaitingCommit
                waiting.approval = nil
                held = waiting
                return
            }
        case .denied:
            let denial = approval.decisions.last { $0.verdict == .deny }
            let reason = denial?.comment.map { ": \($0)" } ?? ""
            var error = ErrorFields(
                severity: "ERROR", sqlstate: "42501", message: "statement denied by \(denial?.approverEmail ?? denial?.approver ?? "an approver")\(reason)")
            error.fields.append((UInt8(ascii: "D"), "approval id: \(approval.id)"))
            recordHeldOutcome(parked, error: error)
            refuseStatement(error, simple: simple)
        case .expired, .used, .pending:
            let error = ErrorFields(severity: "ERROR", sqlstate: "42501", message: "approval \(approval.id) is \(approval.status.rawValue); the statement was not run")
            recordHeldOutcome(parked, error: error)
            refuseStatement(error, simple: simple)
        }
        drainQueue()
    }

    private func useRecorded(_ result: Result<Void, RecorderError>, parked: HeldStatement, simple: Bool) {
        guard !isClosed, held?.frame == parked.frame, held?.stage == .awaitingCommit else { return }
        held = nil
        switch result {
        case .success:
            forward(parked.frame, expecting: parked.action)
        case .failure:
            let error = ErrorFields(
                severity: "ERROR", sqlstate: "58030", message: "Custos cannot record the use of this approval: the store is unavailable; the statement was not run")
            recordHeldOutcome(parked, error: error)
            refuseStatement(error, simple: simple)
        }
        drainQueue()
    }

    private func holdTimedOut(_ id: String, ttl: Duration, simple: Bool) {
        guard !isClosed, let parked = held, parked.stage == .awaitingDecision, parked.approval?.id == id else { return }
        if let waiter = parked.approval?.waiter { gateway.approvals?.stopWaiting(id, waiter) }
        held = nil
        var error = ErrorFields(
            severity: "ERROR", sqlstate: "42501", message: "statement held for approval \(id) is still pending; it was not run",
            hint: "once approval \(id) is approved, send the same statement again (same text and parameters) on this connection within \(Self.spoken(ttl)) of the request to run it once")
        error.fields.append((UInt8(ascii: "D"), "approval id: \(id)"))
        recordHeldOutcome(parked, error: error)
        refuseStatement(error, simple: simple)
        drainQueue()
    }

    /// The client cancelled (Ctrl-C) while its statement waits for a decision: the statement
    /// ends as PostgreSQL ends a cancelled one; the approval stays pending (a later approval is
    /// still a pass for the same statement).
    func cancelHeldStatement() {
        guard !isClosed, let parked = held, parked.stage == .awaitingDecision, let approval = parked.approval else { return }
        approval.timer?.cancel()
        if let waiter = approval.waiter { gateway.approvals?.stopWaiting(approval.id, waiter) }
        held = nil
        var error = ErrorFields(severity: "ERROR", sqlstate: "57014", message: "canceling statement due to user request")
        error.fields.append((UInt8(ascii: "D"), "approval id: \(approval.id) (still pending)"))
        recordHeldOutcome(parked, error: error)
        refuseStatement(error, simple: parked.frame.type == UInt8(ascii: "Q"))
        drainQueue()
    }

    /// A held statement that never ran still gets its result in the record.
    private func recordHeldOutcome(_ parked: HeldStatement, error: ErrorFields) {
        guard let statement = parked.statement else { return }
        recordResult(statement, error: error)
    }

    /// Releases a hold when the session ends.
    func dropApprovalHold() {
        guard let approval = held?.approval else { return }
        approval.timer?.cancel()
        if let waiter = approval.waiter { gateway.approvals?.stopWaiting(approval.id, waiter) }
    }

    /// `90s`, `5m`, `2h`: as a person writes it in the config.
    static func spoken(_ duration: Duration) -> String {
        let seconds = Int(Self.seconds(duration).rounded())
        if seconds < 120 || seconds % 60 != 0 { return "\(seconds)s" }
        if seconds < 7200 || seconds % 3600 != 0 { return "\(seconds / 60)m" }
        return "\(seconds / 3600)h"
    }

    static func seconds(_ duration: Duration) -> TimeInterval {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
