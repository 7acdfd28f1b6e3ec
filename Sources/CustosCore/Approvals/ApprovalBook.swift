import Foundation
import Synchronization

/// The approvals the gateway knows, and the one place they change. Pending ones wait for
/// decisions; approved ones are one-time passes. Every change is an event in the record (which is
/// also how approvals survive a restart: the store keeps their latest state beside the events).
/// Thread-safe; callbacks run on the recorder's thread, so callers hop to their own.
public final class ApprovalBook: Sendable {
    private struct State {
        var approvals: [String: Approval] = [:]
        var waiters: [String: [Int: @Sendable (Approval) -> Void]] = [:]
        var nextWaiter = 0
        /// Approvals whose latest decision is not yet recorded: no pass is taken from them until it is.
        var uncommitted: Set<String> = []
    }

    /// Pending approvals one identity may have at once: a client looping send-and-cancel cannot
    /// flood approvers (or webhooks).
    public static let pendingLimit = 20

    private let state: Mutex<State>
    private let recorder: any Recorder
    private let now: @Sendable () -> Date
    /// Told about every request and decision (webhooks); must not block.
    private let notify: @Sendable (ApprovalNotice) -> Void

    /// - Parameter loaded: approvals still pending or approved when the gateway last stopped.
    public init(
        recorder: any Recorder, loaded: [Approval] = [], now: @escaping @Sendable () -> Date = { Date() },
        notify: @escaping @Sendable (ApprovalNotice) -> Void = { _ in }
    ) {
        var initial = State()
        for approval in loaded { initial.approvals[approval.id] = approval }
        self.state = Mutex(initial)
        self.recorder = recorder
        self.now = now
        self.notify = notify
    }

    public func get(_ id: String) -> Approval? {
        state.withLock { $0.approvals[id] }
    }

    /// Approvals, newest first; `status` nil for all.
    public func list(status: Approval.Status? = nil) -> [Approval] {
        state.withLock { state in
            state.approvals.values.filter { status == nil || $0.status == status }.sorted { $0.createdAt > $1.createdAt }
        }
    }

    /// Opens an approval; `completion` runs once it is recorded (write-ahead, as statements are).
    /// Refused (``ApprovalError/tooManyPending``) when the requester already has
    /// ``pendingLimit`` pending approvals.
    public func request(_ approval: Approval, completion: @escaping @Sendable (Result<Approval, ApprovalError>) -> Void) {
        let date = now()
        let admitted = state.withLock { state in
            let pending = state.approvals.values.filter {
                $0.status == .pending && !$0.isExpired(at: date) && $0.requester.subject == approval.requester.subject
                    && $0.requester.issuer == approval.requester.issuer
            }
            guard pending.count < Self.pendingLimit else { return false }
            state.approvals[approval.id] = approval
            return true
        }
        guard admitted else { return completion(.failure(.tooManyPending)) }
        let notify = self.notify
        recorder.append(Self.event(.approvalRequested, approval, extra: [:], at: now())) { [weak self] result in
            switch result {
            case .success:
                notify(ApprovalNotice(event: .requested, approval: approval, decision: nil))
                completion(.success(approval))
            case .failure(let error):
                _ = self?.state.withLock { $0.approvals.removeValue(forKey: approval.id) }
                completion(.failure(.notRecorded(error.reason)))
            }
        }
    }

    /// Calls `callback` once the approval is approved or denied (or at once if it already is);
    /// returns a token for ``stopWaiting(_:_:)``.
    public func wait(for id: String, _ callback: @escaping @Sendable (Approval) -> Void) -> Int {
        let (token, settled): (Int, Approval?) = state.withLock { state in
            state.nextWaiter += 1
            if let approval = state.approvals[id], approval.status != .pending { return (state.nextWaiter, approval) }
            state.waiters[id, default: [:]][state.nextWaiter] = callback
            return (state.nextWaiter, nil)
        }
        if let settled { callback(settled) }
        return token
    }

    public func stopWaiting(_ id: String, _ token: Int) {
        state.withLock { _ = $0.waiters[id]?.removeValue(forKey: token) }
    }

    /// An approver's decision. Refused for the requester, an approver outside the approval's
    /// groups, a second decision by the same approver, or an approval no longer pending. Any
    /// eligible deny denies; `required` approvals approve. `completion` runs once it is recorded.
    public func decide(
        _ id: String, by approver: Identity, verdict: Approval.Decision.Verdict, comment: String?,
        completion: @escaping @Sendable (Result<Approval, ApprovalError>) -> Void
    ) {
        let date = now()
        let outcome: Result<(before: Approval, after: Approval), ApprovalError> = state.withLock { state in
            guard var approval = state.approvals[id] else { return .failure(.notFound) }
            if approval.status == .pending, approval.isExpired(at: date) { approval.status = .expired }
            guard approval.status == .pending else { return .failure(.notPending(approval.status)) }
            let requester = approval.requester
            // One person may hold accounts at several issuers: an email names them across all.
            if approver.issuer == requester.issuer && approver.subject == requester.subject { return .failure(.selfApproval) }
            if let email = approver.email?.lowercased(), email == requester.email?.lowercased() { return .failure(.selfApproval) }
            guard approver.groups.contains(where: approval.approverGroups.contains) else { return .failure(.notEligible) }
            let already = approval.decisions.contains { decision in
                (decision.approver == approver.subject && decision.approverIssuer == approver.issuer)
                    || (approver.email != nil && decision.approverEmail?.lowercased() == approver.email?.lowercased())
            }
            guard !already else { return .failure(.alreadyDecided) }
            let before = approval
            approval.decisions.append(
                Approval.Decision(
                    approver: approver.subject, approverEmail: approver.email, approverIssuer: approver.issuer, verdict: verdict, comment: comment,
                    at: Timestamp.format(date)))
            if verdict == .deny {
                approval.status = .denied
            } else if approval.approvals >= approval.required {
                approval.status = .approved
            }
            state.approvals[id] = approval
            state.uncommitted.insert(id)
            return .success((before, approval))
        }
        guard case .success(let change) = outcome else {
            if case .failure(let error) = outcome { completion(.failure(error)) }
            return
        }
        let decision = change.after.decisions.last!
        let notify = self.notify
        let extra: [String: CanonicalJSON] = ["decision": Self.decision(decision)]
        recorder.append(Self.event(.approvalDecided, change.after, extra: extra, at: date)) { [weak self] result in
            switch result {
            case .success:
                self?.state.withLock { _ = $0.uncommitted.remove(id) }
                notify(ApprovalNotice(event: .decided, approval: change.after, decision: decision))
                if change.after.status != .pending { self?.settle(change.after) }
                completion(.success(change.after))
            case .failure(let error):
                // Not recorded, so not decided: put the approval back (no pass could be taken meanwhile).
                self?.state.withLock { state in
                    state.uncommitted.remove(id)
                    if state.approvals[id] == change.after { state.approvals[id] = change.before }
                }
                completion(.failure(.notRecorded(error.reason)))
            }
        }
    }

    /// The pass for exactly this statement, if there is one: approved, unexpired, unused, asked by
    /// this identity on this connection with this fingerprint. Taking it uses it up (recorded).
    /// `rule` is the rule now asking for review: a pass granted under another rule (before a
    /// policy reload) releases nothing.
    public func takePass(for identity: Identity, connection: String, fingerprint: String, rule: String?, sessionID: String) -> Approval? {
        let date = now()
        let taken: Approval? = state.withLock { state in
            guard
                var approval = state.approvals.values.first(where: { approval in
                    approval.status == .approved && approval.fingerprint == fingerprint && approval.connection == connection
                        && approval.requester.subject == identity.subject && approval.requester.issuer == identity.issuer
                        && approval.rule == rule && !approval.isExpired(at: date) && !state.uncommitted.contains(approval.id)
                })
            else { return nil }
            approval.status = .used
            approval.usedAt = Timestamp.format(date)
            state.approvals[approval.id] = approval
            return approval
        }
        if let taken { use(taken, sessionID: sessionID, at: date) }
        return taken
    }

    /// Uses an approval that was approved while its statement was held. Nil when it is no longer
    /// usable (taken as a pass meanwhile, or expired). `completion` runs once the use is recorded:
    /// only then may the statement run, so that a crash can never leave a used pass looking unused.
    public func use(_ id: String, sessionID: String, completion: @escaping @Sendable (Result<Void, RecorderError>) -> Void) -> Approval? {
        let date = now()
        let used: Approval? = state.withLock { state in
            guard var approval = state.approvals[id], approval.status == .approved, !approval.isExpired(at: date) else { return nil }
            approval.status = .used
            approval.usedAt = Timestamp.format(date)
            state.approvals[id] = approval
            return approval
        }
        if let used {
            recorder.append(Self.event(.approvalUsed, used, extra: ["used_in_session": .string(sessionID)], at: date), completion: completion)
        }
        return used
    }

    private func use(_ approval: Approval, sessionID: String, at date: Date) {
        recorder.appendLater(Self.event(.approvalUsed, approval, extra: ["used_in_session": .string(sessionID)], at: date))
    }

    /// Expires approvals past their TTL (recorded), and forgets settled ones older than a day.
    public func sweep() {
        let date = now()
        let expired: [Approval] = state.withLock { state in
            var expired: [Approval] = []
            for (id, var approval) in state.approvals where approval.isExpired(at: date) {
                switch approval.status {
                case .pending, .approved:
                    approval.status = .expired
                    state.approvals[id] = approval
                    expired.append(approval)
                case .denied, .expired, .used:
                    if let expiry = Timestamp.parse(approval.expiresAt), date.timeIntervalSince(expiry) > 86_400 { state.approvals[id] = nil }
                }
            }
            return expired
        }
        for approval in expired {
            recorder.appendLater(Self.event(.approvalExpired, approval, extra: [:], at: date))
            settle(approval)
        }
    }

    private func settle(_ approval: Approval) {
        let callbacks = state.withLock { state in state.waiters.removeValue(forKey: approval.id).map { Array($0.values) } ?? [] }
        for callback in callbacks { callback(approval) }
    }

    static func event(_ kind: EventKind, _ approval: Approval, extra: [String: CanonicalJSON], at date: Date) -> EventDraft {
        var payload: [String: CanonicalJSON] = ["approval": snapshot(approval)]
        payload.merge(extra) { $1 }
        return EventDraft(kind: kind, sessionID: approval.sessionID, at: date, payload: .object(payload), approval: approval)
    }

    static func decision(_ decision: Approval.Decision) -> CanonicalJSON {
        [
            "approver": .string(decision.approver), "approver_email": .optional(decision.approverEmail),
            "approver_issuer": .optional(decision.approverIssuer), "verdict": .string(decision.verdict.rawValue),
            "comment": .optional(decision.comment), "at": .string(decision.at),
        ]
    }

    static func snapshot(_ approval: Approval) -> CanonicalJSON {
        [
            "id": .string(approval.id), "status": .string(approval.status.rawValue),
            "requester": [
                "subject": .string(approval.requester.subject), "email": .optional(approval.requester.email),
                "issuer": .string(approval.requester.issuer), "groups": .array(approval.requester.groups.map(CanonicalJSON.string)),
            ],
            "connection": .string(approval.connection), "text": .string(approval.text),
            "parameters": .array(approval.parameters.map(CanonicalJSON.optional)), "fingerprint": .string(approval.fingerprint),
            "text_masked": .bool(approval.textMasked),
            "analysis": .array(
                approval.analysis.map { part in
                    [
                        "kind": .string(part.kind), "tables_read": .array(part.tablesRead.map(CanonicalJSON.string)),
                        "tables_written": .array(part.tablesWritten.map(CanonicalJSON.string)), "flags": .array(part.flags.map(CanonicalJSON.string)),
                    ]
                }),
            "rule": .string(approval.rule), "approver_groups": .array(approval.approverGroups.map(CanonicalJSON.string)),
            "required": .int(Int64(approval.required)), "decisions": .array(approval.decisions.map(decision)),
            "created_at": .string(approval.createdAt), "expires_at": .string(approval.expiresAt), "used_at": .optional(approval.usedAt),
        ]
    }
}

/// What webhooks are told: an approval was requested, or decided.
public struct ApprovalNotice: Sendable {
    public enum Event: String, Sendable {
        case requested, decided
    }

    public var event: Event
    public var approval: Approval
    public var decision: Approval.Decision?
}
