import CustosCore
import Foundation
import Logging

/// The group-commit writer: one thread that commits whatever is queued in one transaction,
/// without waiting to fill a batch, then tells each session its event is durable.
///
/// Events nobody waits for (``appendLater``) do not start a commit of their own: they ride on the
/// next prompt one, or are committed after `lazyWindow` at the latest. A commit costs far more
/// than an insert, so this halves the commits of a statement (its result rides on the next).
///
/// A failed commit fails the events someone waits for (their statements are refused), but keeps
/// the others: they record what already happened (a result, a session's end), so they are tried
/// again before the next commit, or after `retryDelay`, until the store takes them. They are
/// tried in a transaction of their own, so that were one of them refused for good, the events
/// after them are still recorded.
///
/// It owns the writer's chain head, so sequence numbers and previous hashes follow commit order.
/// A session never blocks on it: `append` only queues. With a signer it also signs the head
/// (a ``Checkpoint``) every `checkpointEvery` events, when asked, and when it stops.
public final class EventWriter: Recorder, @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `condition`, or touched only by the writer thread.
    private let store: EventStore
    private let logger: Logger
    private let condition = NSCondition()
    private typealias Completion = @Sendable (Result<Void, RecorderError>) -> Void
    private var queue: [(EventDraft, Completion?)] = []
    /// Queued events someone waits for; while there are none, the writer may linger.
    private var prompt = 0
    /// When the oldest queued lazy event arrived.
    private var lazySince: Date?
    private let lazyWindow: TimeInterval
    private var stopping = false
    private var stopped = false
    private var checkpointRequested = false
    private var indexRequested = false
    private let queueLimit: Int
    /// Events the search index takes in one go between commits.
    static let indexSlice = 2000
    private var thread: Thread?
    // Writer-thread state (read under `condition` by the wait loop): lazy events whose commit
    // failed, oldest first, and when to try them again without a prompt commit.
    private var retained: [(EventDraft, Completion?)] = []
    private var retryAt: Date?
    private let retryDelay: TimeInterval

    /// The writer id whose chain this writer extends.
    public let writerID: String
    // Writer-thread state.
    private var seq: Int64
    private var lastHash: String
    private let signer: CheckpointSigner?
    private let checkpointEvery: Int64
    /// Told of each checkpoint once it is committed (to keep an anchor outside the store).
    private let onCheckpoint: @Sendable (Checkpoint) -> Void
    private var signedSeq: Int64

    /// Starts a writer on `store`, continuing `writerID`'s chain where it ends.
    public init(
        store: EventStore, writerID: String, queueLimit: Int = 100_000, lazyWindow: TimeInterval = 0.01, retryDelay: TimeInterval = 1, signer: CheckpointSigner? = nil,
        checkpointEvery: Int = 1000, onCheckpoint: @escaping @Sendable (Checkpoint) -> Void = { _ in }, logger: Logger
    ) throws {
        self.store = store
        self.signer = signer
        self.onCheckpoint = onCheckpoint
        self.checkpointEvery = Int64(max(1, checkpointEvery))
        self.signedSeq = try store.checkpoints(writerID: writerID).last?.seq ?? 0
        self.lazyWindow = lazyWindow
        self.retryDelay = retryDelay
        self.writerID = writerID
        self.queueLimit = queueLimit
        self.logger = logger
        let head = try store.head(writerID: writerID)
        self.seq = head?.seq ?? 0
        self.lastHash = head?.hash ?? EventChain.genesis
        // The thread keeps the writer alive until `stop()`: a writer dropped without stopping (a
        // gateway whose set-up failed later) must not leave its thread reading freed memory.
        let thread = Thread { [self] in self.run() }
        thread.name = "custos-event-writer"
        self.thread = thread
        thread.start()
    }

    public func append(_ draft: EventDraft, completion: @escaping @Sendable (Result<Void, RecorderError>) -> Void) {
        condition.lock()
        if stopping {
            condition.unlock()
            return completion(.failure(RecorderError(reason: "recorder stopped")))
        }
        if queue.count >= queueLimit {
            condition.unlock()
            return completion(.failure(RecorderError(reason: "recording queue full")))
        }
        queue.append((draft, completion))
        prompt += 1
        condition.signal()
        condition.unlock()
    }

    public func appendLater(_ draft: EventDraft) {
        condition.lock()
        defer { condition.unlock() }
        if stopping || queue.count >= queueLimit {
            logger.error("event dropped", metadata: ["reason": "\(stopping ? "recorder stopped" : "recording queue full")", "kind": "\(draft.kind.rawValue)"])
            return
        }
        queue.append((draft, nil))
        if lazySince == nil {
            lazySince = Date()
            condition.signal()  // so the writer arms its timer
        }
    }

    /// Asks for the search index to catch up with what is committed, between commits.
    public func requestIndexing() {
        condition.lock()
        indexRequested = true
        condition.signal()
        condition.unlock()
    }

    /// Asks for a checkpoint of the head as soon as what is queued is committed (a no-op when
    /// the head is already signed).
    public func requestCheckpoint() {
        condition.lock()
        checkpointRequested = true
        condition.signal()
        condition.unlock()
    }

    /// Commits what is queued and signs the head, then stops the thread. Later appends fail.
    public func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while !stopped { condition.wait() }
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while !stopping && prompt == 0 && !checkpointRequested && !indexRequested {
                let lazyDue = lazySince.map { $0.addingTimeInterval(lazyWindow) }
                guard let due = [lazyDue, retryAt].compactMap({ $0 }).min() else {
                    condition.wait()
                    continue
                }
                if Date() >= due || queue.count >= 1024 { break }
                _ = condition.wait(until: due)
            }
            let again = retained
            let batch = queue
            let finalAttempt = stopping
            retained.removeAll()
            retryAt = nil
            queue.removeAll(keepingCapacity: true)
            prompt = 0
            lazySince = nil
            let done = stopping && batch.isEmpty && again.isEmpty
            let signNow = checkpointRequested || done
            let indexNow = indexRequested || done
            checkpointRequested = false
            indexRequested = false
            condition.unlock()
            if !again.isEmpty { commit(again, sign: false, final: finalAttempt) }
            if !batch.isEmpty { commit(batch, sign: signNow, final: finalAttempt) } else if signNow { signHead() }
            if indexNow { index(all: done) }
            if done { break }
        }
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }

    /// Brings the search index up to date: everything when stopping, else one slice, small enough
    /// that the commits waiting behind it are not held up for long; a backlog takes more slices,
    /// between commits.
    private func index(all: Bool) {
        do {
            if all {
                try store.indexAllStatements()
            } else if try store.indexStatements(limit: Self.indexSlice) >= Self.indexSlice {
                condition.lock()
                indexRequested = true
                condition.unlock()
            }
        } catch {
            logger.warning("search index not updated", metadata: ["error": "\(error)"])
        }
    }

    /// Signs the committed head alone (when asked while nothing was queued, and at stop).
    private func signHead() {
        guard let checkpoint = checkpoint(seq: seq, hash: lastHash, force: true) else { return }
        do {
            try store.insert([], checkpoint: checkpoint)
            signedSeq = checkpoint.seq
            onCheckpoint(checkpoint)
        } catch {
            logger.error("checkpoint not stored", metadata: ["error": "\(error)", "seq": "\(checkpoint.seq)"])
        }
    }

    /// A checkpoint of the head at `seq` when one is due (or `force`d) and the head is unsigned.
    private func checkpoint(seq: Int64, hash: String, force: Bool) -> Checkpoint? {
        guard let signer, seq > signedSeq, force || seq - signedSeq >= checkpointEvery else { return nil }
        do {
            return try signer.sign(writerID: writerID, seq: seq, hash: hash)
        } catch {
            logger.error("checkpoint not signed", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// Commits `batch` in one transaction. On failure the waiting events fail and the others are
    /// retained for the next attempt; on the `final` attempt (stopping) they are given up, loudly.
    private func commit(_ batch: [(EventDraft, Completion?)], sign: Bool, final: Bool) {
        var seq = self.seq
        var lastHash = self.lastHash
        var sealed: [(Event, SessionIndexUpdate?, Approval?)] = []
        sealed.reserveCapacity(batch.count)
        for (draft, _) in batch {
            seq += 1
            let event = EventChain.seal(draft, writerID: writerID, seq: seq, prevHash: lastHash)
            lastHash = event.hash
            sealed.append((event, draft.index, draft.approval))
        }
        let result: Result<Void, RecorderError>
        do {
            let checkpoint = checkpoint(seq: seq, hash: lastHash, force: sign)
            try store.insert(sealed, checkpoint: checkpoint)
            self.seq = seq
            self.lastHash = lastHash
            if let checkpoint {
                signedSeq = checkpoint.seq
                onCheckpoint(checkpoint)
            }
            result = .success(())
        } catch {
            // The chain head stays at the last committed event, so the chain has no gap.
            logger.error("event store write failed", metadata: ["error": "\(error)", "events": "\(batch.count)"])
            result = .failure(RecorderError(reason: "store write failed"))
            let kept = batch.filter { $0.1 == nil }
            if final, !kept.isEmpty {
                let kinds = Set(kept.map(\.0.kind.rawValue)).sorted().joined(separator: ",")
                logger.critical("events not recorded: the store failed as the recorder stopped", metadata: ["events": "\(kept.count)", "kinds": "\(kinds)"])
            } else if !kept.isEmpty {
                condition.lock()
                retained += kept
                if retained.count > queueLimit {
                    // A store broken for long must not take the gateway's memory with it: the oldest are kept.
                    logger.critical("events not recorded: too many waiting for the store", metadata: ["events": "\(retained.count - queueLimit)"])
                    retained.removeLast(retained.count - queueLimit)
                }
                retryAt = Date().addingTimeInterval(retryDelay)
                condition.unlock()
            }
        }
        for (_, completion) in batch { completion?(result) }
    }
}
