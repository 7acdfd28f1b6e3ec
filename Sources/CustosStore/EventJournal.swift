import CustosCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One sealed event as the journal holds it, with what the store derives from it.
struct JournalRecord: Sendable {
    var event: Event
    var index: SessionIndexUpdate?
    var approval: Approval?
}

/// The write-ahead journal: append-only files next to the store (`<store>.ahead.<n>`) that hold
/// each event, sealed, from the moment a session is told it is recorded until the store has it.
///
/// Writing an event is one `pwrite` into the page cache, which survives the process being killed
/// exactly as a SQLite commit with `synchronous=NORMAL` does (only power loss can drop the last
/// writes; docs/evidence.md). The store is loaded from the journal off the statement's path, in
/// large transactions, and a file is removed once everything in it is in the store. After a crash,
/// ``recover(store:logger:)`` loads what the store lacks.
///
/// Not thread-safe: the ``EventWriter`` calls it under its lock.
final class EventJournal {
    /// Path of the store the journal belongs to; files are `<store>.ahead.<n>`.
    let storePath: String
    private var fd: Int32 = -1
    private var number: Int
    /// Bytes written to the current file.
    private(set) var offset: Int64 = 0
    /// Earlier files, with the last seq each holds: removable once the store has that seq.
    private var retired: [(path: String, lastSeq: Int64)] = []
    /// Set by tests to make writes fail as a full disk would.
    var failWrites: Int32?

    /// Starts a new journal file after any left by an earlier run (recover those first).
    init(storePath: String) throws {
        self.storePath = storePath
        self.number = (Self.files(of: storePath).last?.number ?? 0) + 1
        try open()
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
    }

    var currentPath: String { Self.path(storePath, number) }

    static func path(_ store: String, _ number: Int) -> String { "\(store).ahead.\(number)" }

    private func open() throws {
        let path = currentPath
        let opened = Glibc.open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        guard opened >= 0 else { throw JournalError(operation: "open \(path)", code: errno) }
        // Held while the file is written: recovery (another gateway's start, custos verify
        // --recover) refuses to load or remove a journal a running gateway still writes.
        guard flock(opened, LOCK_EX | LOCK_NB) == 0, ftruncate(opened, 0) == 0 else {
            let code = errno
            Glibc.close(opened)
            throw JournalError(operation: "lock \(path)", code: code)
        }
        fd = opened
        offset = 0
    }

    /// Appends `bytes` whole, or fails leaving the file as it was (a partial write is cut off, so
    /// a later write never follows a torn one).
    func write(_ bytes: [UInt8]) throws {
        if let code = failWrites { throw JournalError(operation: "write", code: code) }
        var done = 0
        let total = bytes.count
        while done < total {
            let written = bytes.withUnsafeBytes { raw in pwrite(fd, raw.baseAddress! + done, total - done, off_t(offset) + off_t(done)) }
            if written < 0 {
                if errno == EINTR { continue }
                let code = errno
                if done > 0 { _ = ftruncate(fd, off_t(offset)) }
                throw JournalError(operation: "write", code: code)
            }
            done += written
        }
        offset += Int64(total)
    }

    /// Continues in a new file; the current one is removed once the store holds `lastSeq`.
    /// Returns the previous file's descriptor for the caller to close outside the writer's lock:
    /// closing a file just written can start its write-back (ext4 does on a file it saw
    /// truncated), and statements must not wait for that.
    func rotate(lastSeq: Int64) throws -> Int32 {
        let previous = (path: currentPath, fd: fd)
        number += 1
        do {
            try open()
        } catch {
            number -= 1
            fd = previous.fd
            throw error
        }
        retired.append((previous.path, lastSeq))
        return previous.fd
    }

    /// The retired files whose events the store now holds (through `loadedSeq`): the caller
    /// removes them, outside the writer's lock.
    func removable(loadedSeq: Int64) -> [String] {
        let done = retired.filter { $0.lastSeq <= loadedSeq }.map(\.path)
        retired.removeAll { $0.lastSeq <= loadedSeq }
        return done
    }

    /// Closes the journal; with `remove` (everything is in the store) its files go too.
    func close(remove: Bool) {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        if remove {
            for path in retired.map(\.path) + [currentPath] { unlink(path) }
            retired.removeAll()
        }
    }

    // MARK: Recovery

    /// The journal files of a store, oldest first.
    static func files(of storePath: String) -> [(number: Int, path: String)] {
        let url = URL(fileURLWithPath: storePath)
        let directory = url.deletingLastPathComponent().path
        let prefix = url.lastPathComponent + ".ahead."
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.compactMap { name -> (Int, String)? in
            guard name.hasPrefix(prefix), let number = Int(name.dropFirst(prefix.count)) else { return nil }
            return (number, path(storePath, number))
        }.sorted { $0.0 < $1.0 }
    }

    /// Loads into the store every journaled event it lacks (after a crash), in chain order, then
    /// removes the journal files. An event that does not extend its chain (a write torn by the
    /// crash, or bytes that are not an event) ends that file; if any is left unread that way, the
    /// files are kept for an auditor, renamed `….damaged` so that later starts do not read them
    /// again. Returns how many events were loaded.
    @discardableResult
    static func recover(store: EventStore, problem: (String) -> Void) throws -> Int {
        for file in files(of: store.path) {
            let probe = Glibc.open(file.path, O_RDONLY | O_CLOEXEC)
            guard probe >= 0 else { continue }
            defer { Glibc.close(probe) }
            if flock(probe, LOCK_SH | LOCK_NB) != 0 {
                throw JournalError(operation: "recover: \(file.path) is being written by a running gateway (it loads its journal itself)", code: errno)
            }
        }
        let (count, damaged, files) = try replay(store: store, problem: problem) { batch in
            try store.insert(batch.map { ($0.event, $0.index, $0.approval) })
        }
        for file in files {
            if damaged {
                if rename(file, file + ".damaged") != 0 { problem("\(file): not renamed to \(file).damaged: \(String(cString: strerror(errno)))") }
            } else {
                unlink(file)
            }
        }
        return count
    }

    /// How many journaled events the store lacks, without changing anything.
    static func pending(store: EventStore) throws -> Int {
        try replay(store: store, problem: { _ in }, load: { _ in }).count
    }

    /// Reads a store's journal files in order and calls `load` with the events that extend the
    /// store's chains, in batches, each batch extending the one before.
    private static func replay(
        store: EventStore, problem: (String) -> Void, load: ([JournalRecord]) throws -> Void
    ) throws -> (count: Int, damaged: Bool, files: [String]) {
        let files = files(of: store.path)
        var heads: [String: (seq: Int64, hash: String)] = [:]
        var count = 0
        var damaged = false
        for file in files {
            let data = (try? Data(contentsOf: URL(fileURLWithPath: file.path))) ?? Data()
            var reader = Reader(bytes: [UInt8](data))
            var batch: [JournalRecord] = []
            while !reader.atEnd {
                guard let record = reader.record() else {
                    problem("\(file.path): \(reader.remaining) bytes at offset \(reader.position) are not a whole event (a write cut short by a crash); kept")
                    damaged = true
                    break
                }
                let writer = record.event.writerID
                let head = try heads[writer] ?? store.head(writerID: writer) ?? (0, EventChain.genesis)
                if record.event.seq <= head.seq { continue }  // the store has it already
                guard record.event.seq == head.seq + 1, record.event.prevHash == head.hash, EventChain.isSelfConsistent(record.event) else {
                    problem("\(file.path): the event at offset \(reader.position) does not extend writer \(writer)'s chain at seq \(head.seq); kept")
                    damaged = true
                    break
                }
                heads[writer] = (record.event.seq, record.event.hash)
                batch.append(record)
                if batch.count >= 1000 {
                    try load(batch)
                    count += batch.count
                    batch.removeAll(keepingCapacity: true)
                }
            }
            try load(batch)
            count += batch.count
        }
        return (count, damaged, files.map(\.path))
    }

    // MARK: Format

    /// Appends one record: a 4-byte little-endian length, then a version byte and the fields, each
    /// a 4-byte length and UTF-8 (`0xFFFFFFFF` for none). What the store derives (index, approval)
    /// is JSON in the last field; the event's own hashes check the rest when it is read back.
    static func encode(_ record: JournalRecord, into out: inout [UInt8]) {
        let start = out.count
        out.append(contentsOf: [0, 0, 0, 0, 1])
        let event = record.event
        for field in [event.writerID, String(event.seq), event.at, event.sessionID, event.kind] { append(field, to: &out) }
        append(event.payload, to: &out)
        for field in [event.payloadHash, event.prevHash, event.hash] { append(field, to: &out) }
        if record.index != nil || record.approval != nil {
            let extra = Extra(index: record.index.map(Extra.Index.init), approval: record.approval)
            append(String(decoding: (try? JSONEncoder().encode(extra)) ?? Data(), as: UTF8.self), to: &out)
        } else {
            append(nil, to: &out)
        }
        let length = UInt32(out.count - start - 4)
        for byte in 0..<4 { out[start + byte] = UInt8(truncatingIfNeeded: length >> (8 * UInt32(byte))) }
    }

    private static func append(_ field: String?, to out: inout [UInt8]) {
        guard var text = field else { return out.append(contentsOf: [0xFF, 0xFF, 0xFF, 0xFF]) }
        text.withUTF8 { bytes in
            let count = UInt32(bytes.count)
            out.append(contentsOf: [UInt8(truncatingIfNeeded: count), UInt8(truncatingIfNeeded: count >> 8), UInt8(truncatingIfNeeded: count >> 16), UInt8(truncatingIfNeeded: count >> 24)])
            out.append(contentsOf: bytes)
        }
    }

    /// Reads records back; `nil` at anything that is not a whole record.
    struct Reader {
        let bytes: [UInt8]
        private(set) var position = 0

        init(bytes: [UInt8]) { self.bytes = bytes }

        var atEnd: Bool { position >= bytes.count }
        var remaining: Int { bytes.count - position }

        private func u32(at index: Int) -> UInt32? {
            guard index >= 0, index + 4 <= bytes.count else { return nil }
            return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[index + $1]) << (8 * UInt32($1)) }
        }

        mutating func record() -> JournalRecord? {
            guard let length = u32(at: position), length >= 1, position + 4 + Int(length) <= bytes.count, bytes[position + 4] == 1 else { return nil }
            let end = position + 4 + Int(length)
            var cursor = position + 5
            func next() -> String?? {
                guard let count = u32(at: cursor), cursor + 4 <= end else { return .none }
                cursor += 4
                if count == 0xFFFF_FFFF { return .some(nil) }
                guard cursor + Int(count) <= end else { return .none }
                defer { cursor += Int(count) }
                return .some(String(decoding: bytes[cursor..<(cursor + Int(count))], as: UTF8.self))
            }
            var fields: [String?] = []
            for _ in 0..<10 {
                guard let value = next() else { return nil }
                fields.append(value)
            }
            guard cursor == end, let seqText = fields[1], let seq = Int64(seqText),
                let writerID = fields[0], let at = fields[2], let sessionID = fields[3], let kind = fields[4],
                let payloadHash = fields[6], let prevHash = fields[7], let hash = fields[8]
            else { return nil }
            var record = JournalRecord(
                event: Event(
                    writerID: writerID, seq: seq, at: at, sessionID: sessionID, kind: kind, payload: fields[5], payloadHash: payloadHash, prevHash: prevHash,
                    hash: hash))
            if let text = fields[9] {
                guard let extra = try? JSONDecoder().decode(Extra.self, from: Data(text.utf8)) else { return nil }
                record.index = extra.index?.update
                record.approval = extra.approval
            }
            position = end
            return record
        }
    }

    /// What the store derives from an event, as the journal keeps it.
    private struct Extra: Codable {
        struct Index: Codable {
            var open: SessionSummary?
            var endedAt: String?
            var outcome: String?
            var reason: String?
            var sqlstate: String?

            init(_ update: SessionIndexUpdate) {
                switch update {
                case .open(let summary): open = summary
                case .close(let endedAt, let outcome, let reason, let sqlstate):
                    (self.endedAt, self.outcome, self.reason, self.sqlstate) = (endedAt, outcome, reason, sqlstate)
                }
            }

            var update: SessionIndexUpdate? {
                if let open { return .open(open) }
                guard let endedAt, let outcome else { return nil }
                return .close(endedAt: endedAt, outcome: outcome, reason: reason, sqlstate: sqlstate)
            }
        }

        var index: Index?
        var approval: Approval?
    }
}

/// A journal file operation failed (`code` is the errno).
struct JournalError: Error, CustomStringConvertible {
    var operation: String
    var code: Int32

    var description: String { "journal \(operation): \(String(cString: strerror(code)))" }
}
