import CustosCore
import Foundation
import Logging

/// The group-commit writer: one thread that commits whatever is queued in one transaction,
/// without waiting to fill a batch, then tells each session its event is durable.
///
/// It owns the writer's chain head, so sequence numbers and previous hashes follow commit order.
/// A session never blocks on it: `append` only queues.
public final class EventWriter: Recorder, @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `condition`, or touched only by the writer thread.
    private let store: EventStore
    private let logger: Logger
    private let condition = NSCondition()
    private var queue: [(EventDraft, @Sendable (Result<Void, RecorderError>) -> Void)] = []
    private var stopping = false
    private var stopped = false
    private let queueLimit: Int
    private var thread: Thread?

    /// The writer id whose chain this writer extends.
    public let writerID: String
    // Writer-thread state.
    private var seq: Int64
    private var lastHash: String

    /// Starts a writer on `store`, continuing `writerID`'s chain where it ends.
    public init(store: EventStore, writerID: String, queueLimit: Int = 100_000, logger: Logger) throws {
        self.store = store
        self.writerID = writerID
        self.queueLimit = queueLimit
        self.logger = logger
        let head = try store.head(writerID: writerID)
        self.seq = head?.seq ?? 0
        self.lastHash = head?.hash ?? EventChain.genesis
        let thread = Thread { [unowned self] in self.run() }
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
        condition.signal()
        condition.unlock()
    }

    /// Commits what is queued, then stops the thread. Later appends fail.
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
            while queue.isEmpty && !stopping { condition.wait() }
            let batch = queue
            queue.removeAll(keepingCapacity: true)
            let done = stopping && batch.isEmpty
            condition.unlock()
            if done { break }
            commit(batch)
        }
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }

    private func commit(_ batch: [(EventDraft, @Sendable (Result<Void, RecorderError>) -> Void)]) {
        var seq = self.seq
        var lastHash = self.lastHash
        var sealed: [(Event, SessionIndexUpdate?)] = []
        sealed.reserveCapacity(batch.count)
        for (draft, _) in batch {
            seq += 1
            let event = EventChain.seal(draft, writerID: writerID, seq: seq, prevHash: lastHash)
            lastHash = event.hash
            sealed.append((event, draft.index))
        }
        let result: Result<Void, RecorderError>
        do {
            try store.insert(sealed)
            self.seq = seq
            self.lastHash = lastHash
            result = .success(())
        } catch {
            // The chain head stays at the last committed event, so the chain has no gap.
            logger.error("event store write failed", metadata: ["error": "\(error)", "events": "\(batch.count)"])
            result = .failure(RecorderError(reason: "store write failed"))
        }
        for (_, completion) in batch { completion(result) }
    }
}
