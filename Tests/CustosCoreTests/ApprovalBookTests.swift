import Foundation
import Synchronization
import Testing

@testable import CustosCore

/// A recorder that commits at once and remembers what it was given.
final class MemoryRecorder: Recorder, Sendable {
    let drafts = Mutex<[EventDraft]>([])
    let failing = Mutex(false)

    func append(_ draft: EventDraft, completion: @escaping @Sendable (Result<Void, RecorderError>) -> Void) {
        if failing.withLock({ $0 }) { return completion(.failure(RecorderError(reason: "broken"))) }
        drafts.withLock { $0.append(draft) }
        completion(.success(()))
    }

    func appendLater(_ draft: EventDraft) {
        drafts.withLock { $0.append(draft) }
    }

    var kinds: [EventKind] { drafts.withLock { $0.map(\.kind) } }
}

/// A clock tests move by hand.
final class TestClock: Sendable {
    let now = Mutex(Date(timeIntervalSince1970: 1_800_000_000))
    func advance(_ seconds: TimeInterval) { now.withLock { $0 = $0.addingTimeInterval(seconds) } }
    var read: @Sendable () -> Date { { self.now.withLock { $0 } } }
}

@Suite("Approvals")
struct ApprovalBookTests {
    static let agent = Identity(subject: "agent-1", email: "agent@example.com", groups: ["agents"], issuer: "https://idp", tokenID: nil, expiresAt: .distantFuture)
    static let dba = Identity(subject: "dba-1", email: "dba@example.com", groups: ["dba"], issuer: "https://idp", tokenID: nil, expiresAt: .distantFuture)
    static let dba2 = Identity(subject: "dba-2", email: "dba2@example.com", groups: ["dba"], issuer: "https://idp", tokenID: nil, expiresAt: .distantFuture)
    static let auditor = Identity(subject: "aud-1", email: "aud@example.com", groups: ["auditors"], issuer: "https://idp", tokenID: nil, expiresAt: .distantFuture)

    static func approval(required: Int = 1, clock: TestClock, requester: Identity = agent, parameters: [String?] = ["7"]) -> Approval {
        Approval(
            requester: requester, connection: "appdb", sessionID: "s1", text: "UPDATE t SET x = $1", parameters: parameters,
            fingerprint: Approval.fingerprint(text: "UPDATE t SET x = $1", parameters: parameters), rule: "changes", approverGroups: ["dba"],
            required: required, createdAt: clock.read(), ttl: 60)
    }

    static func decide(_ book: ApprovalBook, _ id: String, by who: Identity, _ verdict: Approval.Decision.Verdict, comment: String? = nil) -> Result<Approval, ApprovalError> {
        let result = Mutex<Result<Approval, ApprovalError>?>(nil)
        book.decide(id, by: who, verdict: verdict, comment: comment) { outcome in result.withLock { $0 = outcome } }
        return result.withLock { $0! }
    }

    @Test("an approval is decided by an eligible approver, never by the requester or an outsider; waiters hear of it")
    func decisions() throws {
        let clock = TestClock()
        let recorder = MemoryRecorder()
        let book = ApprovalBook(recorder: recorder, now: clock.read)
        let approval = Self.approval(clock: clock)
        book.request(approval) { _ in }
        let heard = Mutex<Approval.Status?>(nil)
        _ = book.wait(for: approval.id) { settled in heard.withLock { $0 = settled.status } }

        #expect(Self.decide(book, approval.id, by: Self.agent, .approve) == .failure(.selfApproval))
        #expect(Self.decide(book, approval.id, by: Self.auditor, .approve) == .failure(.notEligible))
        #expect(Self.decide(book, "nope", by: Self.dba, .approve) == .failure(.notFound))
        #expect(heard.withLock { $0 } == nil)
        let approved = try Self.decide(book, approval.id, by: Self.dba, .approve, comment: "ok").get()
        #expect(approved.status == .approved)
        #expect(heard.withLock { $0 } == .approved)
        #expect(Self.decide(book, approval.id, by: Self.dba2, .deny) == .failure(.notPending(.approved)))
        #expect(recorder.kinds == [.approvalRequested, .approvalDecided])
        #expect(recorder.drafts.withLock { $0.last?.approval?.status } == .approved, "the store keeps the latest state")
    }

    @Test("the same person under another issuer, or an email in other case, is still the requester; floods are capped")
    func selfAndFlood() {
        let clock = TestClock()
        let book = ApprovalBook(recorder: MemoryRecorder(), now: clock.read)
        let approval = Self.approval(clock: clock)
        book.request(approval) { _ in }
        let twin = Identity(subject: "other-sub", email: "AGENT@example.com", groups: ["dba"], issuer: "https://other-idp", tokenID: nil, expiresAt: .distantFuture)
        #expect(Self.decide(book, approval.id, by: twin, .approve) == .failure(.selfApproval))
        let refused = Mutex<ApprovalError?>(nil)
        for _ in 1..<ApprovalBook.pendingLimit { book.request(Self.approval(clock: clock)) { _ in } }
        book.request(Self.approval(clock: clock)) { result in
            if case .failure(let error) = result { refused.withLock { $0 = error } }
        }
        #expect(refused.withLock { $0 } == .tooManyPending)
    }

    @Test("two approvals needed; one deny denies; an approver decides once")
    func quorum() throws {
        let clock = TestClock()
        let book = ApprovalBook(recorder: MemoryRecorder(), now: clock.read)
        let approval = Self.approval(required: 2, clock: clock)
        book.request(approval) { _ in }
        #expect(try Self.decide(book, approval.id, by: Self.dba, .approve).get().status == .pending)
        #expect(Self.decide(book, approval.id, by: Self.dba, .approve) == .failure(.alreadyDecided))
        #expect(try Self.decide(book, approval.id, by: Self.dba2, .approve).get().status == .approved)

        let other = Self.approval(required: 2, clock: clock)
        book.request(other) { _ in }
        _ = Self.decide(book, other.id, by: Self.dba, .approve)
        #expect(try Self.decide(book, other.id, by: Self.dba2, .deny, comment: "no").get().status == .denied)
    }

    @Test("a pass releases exactly that statement, by that identity, on that connection, once, within the TTL")
    func passes() {
        let clock = TestClock()
        let recorder = MemoryRecorder()
        let book = ApprovalBook(recorder: recorder, now: clock.read)
        let approval = Self.approval(clock: clock)
        book.request(approval) { _ in }
        #expect(book.takePass(for: Self.agent, connection: "appdb", fingerprint: approval.fingerprint, rule: "changes", sessionID: "s2") == nil, "pending is no pass")
        _ = Self.decide(book, approval.id, by: Self.dba, .approve)
        let other = Approval.fingerprint(text: "UPDATE t SET x = $1", parameters: ["8"])
        #expect(book.takePass(for: Self.agent, connection: "appdb", fingerprint: other, rule: "changes", sessionID: "s2") == nil, "another parameter")
        #expect(book.takePass(for: Self.dba, connection: "appdb", fingerprint: approval.fingerprint, rule: "changes", sessionID: "s2") == nil, "another identity")
        #expect(book.takePass(for: Self.agent, connection: "other", fingerprint: approval.fingerprint, rule: "changes", sessionID: "s2") == nil, "another connection")
        #expect(book.takePass(for: Self.agent, connection: "appdb", fingerprint: approval.fingerprint, rule: "other", sessionID: "s2") == nil, "another rule (a reloaded policy)")
        #expect(book.takePass(for: Self.agent, connection: "appdb", fingerprint: approval.fingerprint, rule: "changes", sessionID: "s2")?.status == .used)
        #expect(book.takePass(for: Self.agent, connection: "appdb", fingerprint: approval.fingerprint, rule: "changes", sessionID: "s3") == nil, "only once")
        #expect(recorder.kinds.last == .approvalUsed)

        let late = Self.approval(clock: clock)
        book.request(late) { _ in }
        _ = Self.decide(book, late.id, by: Self.dba, .approve)
        clock.advance(61)
        #expect(book.takePass(for: Self.agent, connection: "appdb", fingerprint: late.fingerprint, rule: "changes", sessionID: "s4") == nil, "expired")
        book.sweep()
        #expect(book.get(late.id)?.status == .expired)
        #expect(recorder.kinds.last == .approvalExpired)
    }

    @Test("a decision the store cannot record does not count")
    func unrecorded() {
        let clock = TestClock()
        let recorder = MemoryRecorder()
        let book = ApprovalBook(recorder: recorder, now: clock.read)
        let approval = Self.approval(clock: clock)
        book.request(approval) { _ in }
        recorder.failing.withLock { $0 = true }
        guard case .failure(.notRecorded) = Self.decide(book, approval.id, by: Self.dba, .approve) else {
            Issue.record("expected notRecorded")
            return
        }
        #expect(book.get(approval.id)?.status == .pending)
    }

    @Test("approvals loaded at start are pending again, and the fingerprint tells NULL from text")
    func loadedAndFingerprints() {
        let clock = TestClock()
        let approval = Self.approval(clock: clock)
        let book = ApprovalBook(recorder: MemoryRecorder(), loaded: [approval], now: clock.read)
        #expect(book.list(status: .pending).map(\.id) == [approval.id])
        #expect(Approval.fingerprint(text: "q", parameters: [nil]) != Approval.fingerprint(text: "q", parameters: [""]))
        #expect(Approval.fingerprint(text: "q", parameters: ["a"]) != Approval.fingerprint(text: "q ", parameters: ["a"]))
    }
}
