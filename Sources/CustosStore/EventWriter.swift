import CustosCore
import Foundation
import Logging

/// The recorder: it writes each event to the write-ahead journal (``EventJournal``) on the
/// caller's thread, and loads the store from it on a thread of its own.
///
/// An event is recorded (and `append`'s completion runs, before `append` returns) once it is in
/// the journal: one `pwrite` under a lock, with no hand-off to another thread, so a write-ahead
/// statement waits microseconds rather than a database commit. The loader then inserts what was
/// written into the SQLite store in one transaction per `loadWindow`, off every statement's path,
/// signs checkpoints and feeds the search index; readers of the store see an event once it is
/// loaded, normally within milliseconds (``waitUntilLoaded(timeout:)`` waits for it).
///
/// Events nobody waits for (``appendLater``) are written with the next prompt event, or after
/// `lazyWindow` at the latest. A failed journal write fails the prompt event (its statement is
/// refused) and keeps the lazy ones, which record what already happened: they are tried again
/// with the next write, or after `retryDelay`. A failed load keeps the events for the next attempt
/// (after `retryDelay`): they are already safe in the journal. While more than `queueLimit` events
/// wait to be loaded, prompt events fail ("recording queue full"), so a store that cannot keep up
/// slows the gateway rather than its memory growing without bound.
///
/// It owns the writer's chain head, so sequence numbers and previous hashes follow journal order.
/// With a signer it also signs the loaded head (a ``Checkpoint``) every `checkpointEvery` events,
/// when asked, and when it stops.
public final class EventWriter: Recorder, @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `condition`, or touched only by the loader thread.
    private let store: EventStore
    private let logger: Logger
    private let condition = NSCondition()
    private let journal: EventJournal
    /// The chain head as written to the journal.
    private var seq: Int64
    private var lastHash: String
    /// Lazy drafts not written yet, oldest first; `lazySince` is when the oldest arrived.
    private var lazy: [(EventDraft, EventChain.Prepared)] = []
    private var lazySince: Date?
    private let lazyWindow: TimeInterval
    /// Written to the journal, not yet in the store, in seq order; and when the oldest was written.
    private var unloaded: [JournalRecord] = []
    private var unloadedSince: Date?
    private let loadWindow: TimeInterval
    /// The last seq the store holds.
    private var loadedSeq: Int64
    /// After a failed load or lazy write: when to try again.
    private var retryAt: Date?
    private let retryDelay: TimeInterval
    private var stopping = false
    private var stopped = false
    private var checkpointRequested = false
    private var indexRequested = false
    private let queueLimit: Int
    /// Reused for each journal write.
    private var buffer: [UInt8] = []
    /// Events the search index takes in one go between loads.
    static let indexSlice = 2000
    /// A journal file is continued in a new one past this size, and removed once loaded.
    private let journalFileBytes: Int64
    private var thread: Thread?
    /// How the loader waits: writers wake it only when it would otherwise sleep past their due
    /// time, not for every event (a wake-up is a futex call on the statement's path).
    private var loaderWait = LoaderWait.working

    private enum LoaderWait {
        case working
        case idle
        case until(Date)
    }

    /// The writer id whose chain this writer extends.
    public let writerID: String
    // Loader-thread state: the head the store holds.
    private var loadedHeadSeq: Int64
    private var loadedHash: String
    private let signer: CheckpointSigner?
    private let checkpointEvery: Int64
    /// Told of each checkpoint once it is committed (to keep an anchor outside the store).
    private let onCheckpoint: @Sendable (Checkpoint) -> Void
    private var signedSeq: Int64

    /// Starts a writer on `store`, continuing `writerID`'s chain where it ends (first loading what
    /// a crash left in the journal).
    public init(
        store: EventStore, writerID: String, queueLimit: Int = 100_000, lazyWindow: TimeInterval = 0.01, loadWindow: TimeInterval = 0.01,
        retryDelay: TimeInterval = 1, journalFileBytes: Int64 = 16 << 20, signer: CheckpointSigner? = nil, checkpointEvery: Int = 1000,
        onCheckpoint: @escaping @Sendable (Checkpoint) -> Void = { _ in }, logger: Logger
    ) throws {
        try Self.recoverJournal(store: store, logger: logger)
        self.store = store
        self.signer = signer
        self.onCheckpoint = onCheckpoint
        self.checkpointEvery = Int64(max(1, checkpointEvery))
        self.signedSeq = try store.checkpoints(writerID: writerID).last?.seq ?? 0
        self.lazyWindow = lazyWindow
        self.loadWindow = loadWindow
        self.retryDelay = retryDelay
        self.journalFileBytes = journalFileBytes
        self.writerID = writerID
        self.queueLimit = queueLimit
        self.logger = logger
        let head = try store.head(writerID: writerID)
        self.seq = head?.seq ?? 0
        self.lastHash = head?.hash ?? EventChain.genesis
        self.loadedSeq = seq
        self.loadedHeadSeq = seq
        self.loadedHash = lastHash
        self.journal = try EventJournal(storePath: store.path)
        // The thread keeps the writer alive until `stop()`: a writer dropped without stopping (a
        // gateway whose set-up failed later) must not leave its thread reading freed memory.
        let thread = Thread { [self] in self.run() }
        self.thread = thread
        thread.start()
    }

    /// Loads into `store` what the journal holds beyond it: the events a crash left unloaded.
    /// Returns how many. (``init`` does it too; the gateway does it first, so that the chain it
    /// checks at start is whole.)
    @discardableResult
    public static func recoverJournal(store: EventStore, logger: Logger) throws -> Int {
        let count = try EventJournal.recover(store: store) { logger.warning("write-ahead journal damaged", metadata: ["problem": "\($0)"]) }
        if count > 0 { logger.warning("events a crash left in the write-ahead journal are now in the store", metadata: ["events": "\(count)"]) }
        return count
    }

    /// How many events the journal next to `store` holds that the store lacks (read only): a
    /// running gateway's last few milliseconds, or what a crash left for the next start.
    public static func journalPending(store: EventStore) throws -> Int {
        try EventJournal.pending(store: store)
    }

    public func append(_ draft: EventDraft, completion: @escaping @Sendable (Result<Void, RecorderError>) -> Void) {
        let prepared = EventChain.prepare(draft)
        condition.lock()
        let result: Result<Void, RecorderError>
        if stopping {
            result = .failure(RecorderError(reason: "recorder stopped"))
        } else if unloaded.count >= queueLimit {
            result = .failure(RecorderError(reason: "recording queue full"))
        } else {
            result = write(prompt: (draft, prepared))
        }
        condition.unlock()
        completion(result)
    }

    public func appendLater(_ draft: EventDraft) {
        let prepared = EventChain.prepare(draft)
        condition.lock()
        defer { condition.unlock() }
        if stopping || lazy.count >= queueLimit {
            logger.error("event dropped", metadata: ["reason": "\(stopping ? "recorder stopped" : "recording queue full")", "kind": "\(draft.kind.rawValue)"])
            return
        }
        lazy.append((draft, prepared))
        if lazySince == nil {
            let now = Date()
            lazySince = now
            wakeLoader(by: now.addingTimeInterval(lazyWindow))
        }
    }

    /// Writes the lazy drafts waiting, then `prompt`, to the journal in one write. Holds `condition`.
    private func write(prompt: (EventDraft, EventChain.Prepared)?) -> Result<Void, RecorderError> {
        var seq = self.seq
        var hash = lastHash
        var records: [JournalRecord] = []
        records.reserveCapacity(lazy.count + 1)
        buffer.removeAll(keepingCapacity: true)
        func add(_ draft: EventDraft, _ prepared: EventChain.Prepared) {
            seq += 1
            let event = EventChain.seal(draft, prepared: prepared, writerID: writerID, seq: seq, prevHash: hash)
            hash = event.hash
            let record = JournalRecord(event: event, index: draft.index, approval: draft.approval)
            EventJournal.encode(record, into: &buffer)
            records.append(record)
        }
        for (draft, prepared) in lazy { add(draft, prepared) }
        if let (draft, prepared) = prompt { add(draft, prepared) }
        do {
            try journal.write(buffer)
        } catch {
            // The chain head stays at the last written event, so the chain has no gap.
            logger.error("event journal write failed", metadata: ["error": "\(error)", "events": "\(records.count)"])
            return .failure(RecorderError(reason: "store write failed"))
        }
        self.seq = seq
        lastHash = hash
        lazy.removeAll(keepingCapacity: true)
        lazySince = nil
        if unloaded.isEmpty {
            let now = Date()
            unloadedSince = now
            wakeLoader(by: now.addingTimeInterval(loadWindow))
        }
        unloaded += records
        return .success(())
    }

    /// Wakes the loader if it would sleep past `due`. Holds `condition`.
    private func wakeLoader(by due: Date) {
        switch loaderWait {
        case .working: break  // it looks again before it sleeps
        case .idle: condition.broadcast()
        case .until(let deadline): if deadline > due { condition.broadcast() }
        }
    }

    /// Makes journal writes fail with `code` (an errno), as a full disk does; nil ends it. For tests.
    func failJournalWrites(_ code: Int32?) {
        condition.lock()
        journal.failWrites = code
        condition.unlock()
    }

    /// Waits until the store holds every event recorded so far (for readers that must see their
    /// own writes, and tests); false on timeout or when loading fails.
    @discardableResult
    public func waitUntilLoaded(timeout: TimeInterval = 5) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        if !lazy.isEmpty, !stopping { _ = write(prompt: nil) }
        let target = seq
        while loadedSeq < target, !stopped {
            if !condition.wait(until: deadline) { return loadedSeq >= target }
        }
        return loadedSeq >= target
    }

    /// Asks for the search index to catch up with what is committed, between commits.
    public func requestIndexing() {
        condition.lock()
        indexRequested = true
        condition.broadcast()
        condition.unlock()
    }

    /// Asks for a checkpoint of the head as soon as what is queued is committed (a no-op when
    /// the head is already signed).
    public func requestCheckpoint() {
        condition.lock()
        checkpointRequested = true
        condition.broadcast()
        condition.unlock()
    }

    /// Writes and loads what is left and signs the head, then stops the thread. Later appends fail.
    public func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while !stopped { condition.wait() }
        condition.unlock()
    }

    /// The loader: waits for written events (up to `loadWindow`, so that a busy gateway loads many
    /// per transaction), writes lazy events that waited `lazyWindow`, and loads.
    private func run() {
        // Foundation names the kernel thread (what top -H and scripts/bench read) only when the
        // name is set on the thread itself; 15 bytes at most.
        Thread.current.name = "custos-loader"
        condition.lock()
        while true {
            while !stopping && !checkpointRequested && !indexRequested {
                var due: [Date] = []
                if let lazySince { due.append(lazySince.addingTimeInterval(lazyWindow)) }
                if let unloadedSince { due.append(unloadedSince.addingTimeInterval(loadWindow)) }
                guard let next = due.min().map({ max($0, retryAt ?? $0) }) else {
                    loaderWait = .idle
                    condition.wait()
                    loaderWait = .working
                    continue
                }
                if Date() >= next { break }
                loaderWait = .until(next)
                _ = condition.wait(until: next)
                loaderWait = .working
            }
            let now = Date()
            let final = stopping
            let mayRetry = final || retryAt.map { now >= $0 } ?? true
            if !lazy.isEmpty, mayRetry, final || lazySince.map({ now >= $0.addingTimeInterval(lazyWindow) }) ?? false {
                if case .failure = write(prompt: nil) {
                    retryAt = now.addingTimeInterval(retryDelay)
                    if final {
                        logger.critical("events not recorded: the journal failed as the recorder stopped", metadata: ["events": "\(lazy.count)"])
                        lazy.removeAll()
                    }
                }
            }
            let batch = mayRetry ? unloaded : []
            let sign = checkpointRequested || final
            let indexNow = indexRequested || final
            checkpointRequested = false
            indexRequested = false
            condition.unlock()

            var loaded = false
            if !batch.isEmpty { loaded = load(batch, sign: sign) } else if sign { signHead() }
            if indexNow { index(all: final) }

            condition.lock()
            var remove: [String] = []
            var retiredFile: Int32?
            if loaded {
                unloaded.removeFirst(batch.count)
                unloadedSince = unloaded.isEmpty ? nil : Date()
                loadedSeq = batch.last!.event.seq
                retryAt = nil
                condition.broadcast()  // waitUntilLoaded
            } else if !batch.isEmpty {
                retryAt = Date().addingTimeInterval(retryDelay)
            }
            if journal.offset >= journalFileBytes, !final {
                do {
                    retiredFile = try journal.rotate(lastSeq: seq)
                } catch {
                    logger.error("event journal not rotated", metadata: ["error": "\(error)"])
                }
            }
            remove = journal.removable(loadedSeq: loadedSeq)
            if final {
                if !unloaded.isEmpty {
                    // Nothing is lost: the journal keeps them, and the next start loads them.
                    logger.critical("events not loaded into the store as the recorder stopped; kept in the journal for the next start", metadata: ["events": "\(unloaded.count)", "journal": "\(journal.currentPath)"])
                }
                journal.close(remove: unloaded.isEmpty && lazy.isEmpty)
                break
            }
            if retiredFile != nil || !remove.isEmpty {
                condition.unlock()
                if let retiredFile { Glibc.close(retiredFile) }
                for path in remove { unlink(path) }
                condition.lock()
            }
        }
        stopped = true
        condition.broadcast()
        condition.unlock()
    }

    /// Brings the search index up to date: everything when stopping, else one slice, small enough
    /// that the loads waiting behind it are not held up for long; a backlog takes more slices,
    /// between loads.
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
        guard let checkpoint = checkpoint(seq: loadedHeadSeq, hash: loadedHash, after: signedSeq, force: true) else { return }
        do {
            try store.insert([], checkpoints: [checkpoint])
            signedSeq = checkpoint.seq
            onCheckpoint(checkpoint)
        } catch {
            logger.error("checkpoint not stored", metadata: ["error": "\(error)", "seq": "\(checkpoint.seq)"])
        }
    }

    /// A checkpoint of the head at `seq` when one is due after the one at `after` (or `force`d) and
    /// the head is unsigned.
    private func checkpoint(seq: Int64, hash: String, after: Int64, force: Bool) -> Checkpoint? {
        guard let signer, seq > after, force || seq - after >= checkpointEvery else { return nil }
        do {
            return try signer.sign(writerID: writerID, seq: seq, hash: hash)
        } catch {
            logger.error("checkpoint not signed", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// Loads `batch` into the store in one transaction, with a checkpoint at each event where one
    /// falls due (every `checkpointEvery`) and at the last when `sign`. Returns whether it did; on
    /// failure the events stay in the journal and are retried.
    private func load(_ batch: [JournalRecord], sign: Bool) -> Bool {
        var checkpoints: [Checkpoint] = []
        var signed = signedSeq
        for (position, record) in batch.enumerated() {
            let force = sign && position == batch.count - 1
            if let checkpoint = checkpoint(seq: record.event.seq, hash: record.event.hash, after: signed, force: force) {
                checkpoints.append(checkpoint)
                signed = checkpoint.seq
            }
        }
        do {
            try store.insert(batch.map { ($0.event, $0.index, $0.approval) }, checkpoints: checkpoints)
        } catch {
            logger.error("event store write failed; the events are kept in the journal and loaded later", metadata: ["error": "\(error)", "events": "\(batch.count)"])
            return false
        }
        loadedHeadSeq = batch.last!.event.seq
        loadedHash = batch.last!.event.hash
        signedSeq = signed
        for checkpoint in checkpoints { onCheckpoint(checkpoint) }
        return true
    }
}
