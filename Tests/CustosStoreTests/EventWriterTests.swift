import CustosCore
import Foundation
import Logging
import Testing

@testable import CustosStore

@Suite("Event store and writer")
struct EventWriterTests {
    let directory: URL

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("custos-store-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    var path: String { directory.appendingPathComponent("events.sqlite").path }

    func append(_ writer: EventWriter, _ draft: EventDraft) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            writer.append(draft) { result in continuation.resume(with: result.mapError { $0 as any Error }) }
        }
    }

    static func session(_ events: SessionEvents) -> [EventDraft] {
        let identity = Identity(subject: "agent-1", email: "a1@example.com", groups: ["agents"], issuer: "http://127.0.0.1:9000", tokenID: "j1", expiresAt: Date())
        let client = SessionEvents.Client(address: "127.0.0.1:5000", database: "appdb", startupUser: "agent", applicationName: "psql")
        let connection = ConnectionTarget(name: "appdb", kind: "postgres", allowGroups: ["agents"])
        let decision = Decision(verdict: .allow, rule: "r", policy: "none")
        return [
            events.open(client: client, identity: identity, connection: connection, decision: decision),
            events.statement(number: 1, action: Action(channel: .simple, text: "SELECT 1"), decision: decision),
            events.result(number: 1, outcome: .init(commandTag: "SELECT 1", rows: 1, durationMicros: 120)),
            events.close(outcome: "closed", reason: nil, sqlstate: nil, statements: 1),
        ]
    }

    @Test("events chain across sessions and across a restart of the writer")
    func chainAcrossRestart() async throws {
        let store = try EventStore(path: path)
        let writerID = try store.writerID(preferred: nil)
        #expect(try store.writerID(preferred: nil) == writerID, "the writer id is stable")
        var writer = try EventWriter(store: store, writerID: writerID, logger: Logger(label: "test"))
        for draft in Self.session(SessionEvents()) { try await append(writer, draft) }
        writer.stop()
        writer = try EventWriter(store: try EventStore(path: path), writerID: writerID, logger: Logger(label: "test"))
        for draft in Self.session(SessionEvents()) { try await append(writer, draft) }
        writer.stop()

        let events = try EventStore(path: path, readOnly: true).events(writerID: writerID)
        #expect(events.map(\.seq) == Array(1...8))
        #expect(events.first?.prevHash == EventChain.genesis)
        for (previous, event) in zip(events, events.dropFirst()) {
            #expect(event.prevHash == previous.hash)
        }
        #expect(events.allSatisfy(EventChain.isSelfConsistent))
    }

    @Test("the session index follows open, statements and close")
    func sessionIndex() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", logger: Logger(label: "test"))
        let events = SessionEvents()
        for draft in Self.session(events) { try await append(writer, draft) }
        writer.stop()
        let sessions = try store.sessions(SessionFilter(identity: "a1@example.com"))
        #expect(sessions.count == 1)
        let session = try #require(sessions.first)
        #expect(session.id == events.sessionID)
        #expect(session.outcome == "closed")
        #expect(session.statementCount == 1)
        #expect(session.groups == ["agents"])
        #expect(session.endedAt != nil)
        #expect(try store.sessions(SessionFilter(identity: "someone-else")).isEmpty)
        #expect(try store.sessions(SessionFilter(connection: "appdb", since: Date().addingTimeInterval(-60))).count == 1)
        #expect(try store.sessions(SessionFilter(until: Date().addingTimeInterval(-3600))).isEmpty)
        let (_, stored) = try #require(try store.session(id: String(events.sessionID.prefix(8))))
        #expect(stored.map(\.kind) == ["session.open", "statement", "result", "session.close"])
    }

    @Test("a failed journal write fails the event and leaves no gap in the chain")
    func failureLeavesNoGap() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", logger: Logger(label: "test"))
        let drafts = Self.session(SessionEvents())
        try await append(writer, drafts[0])
        writer.failJournalWrites(ENOSPC)
        await #expect(throws: RecorderError.self) { try await append(writer, drafts[1]) }
        writer.failJournalWrites(nil)
        try await append(writer, drafts[1])
        writer.stop()
        #expect(try store.events(writerID: "w").map(\.seq) == [1, 2])
        #expect(EventJournal.files(of: path).isEmpty, "a clean stop leaves no journal behind")
    }

    @Test("an event is recorded before the store has it, and the store has it once loaded")
    func loadedAfterRecorded() async throws {
        let store = try EventStore(path: path)
        // A long load window: the store lags the journal visibly.
        let writer = try EventWriter(store: store, writerID: "w", loadWindow: 0.3, logger: Logger(label: "test"))
        let drafts = Self.session(SessionEvents())
        try await append(writer, drafts[0])
        #expect(try store.events(writerID: "w").isEmpty)
        #expect(writer.waitUntilLoaded())
        #expect(try store.events(writerID: "w").map(\.kind) == ["session.open"])
        writer.stop()
    }

    @Test("lazy events keep their order and are written with the next prompt event, or soon after alone")
    func lazyEvents() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", lazyWindow: 0.05, logger: Logger(label: "test"))
        let drafts = Self.session(SessionEvents())
        try await append(writer, drafts[0])
        writer.appendLater(drafts[2])  // a result nobody waits for
        try await append(writer, drafts[1])
        #expect(writer.waitUntilLoaded())
        #expect(try store.events(writerID: "w").map(\.kind) == ["session.open", "result", "statement"])
        writer.appendLater(drafts[3])
        let deadline = Date().addingTimeInterval(5)
        while try store.events(writerID: "w").count < 4, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(try store.events(writerID: "w").last?.kind == "session.close")
        writer.stop()
    }

    @Test("a lazy event whose write failed is kept and written once the journal takes writes again")
    func lazyEventsSurviveAFailedWrite() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", lazyWindow: 0.01, retryDelay: 0.05, logger: Logger(label: "test"))
        let drafts = Self.session(SessionEvents())
        try await append(writer, drafts[0])
        writer.failJournalWrites(EROFS)
        writer.appendLater(drafts[2])  // a result: the statement ran, so it must not be lost
        await #expect(throws: RecorderError.self) { try await append(writer, drafts[1]) }
        try await Task.sleep(for: .milliseconds(200))  // several retries, all refused
        #expect(try store.events(writerID: "w").map(\.kind) == ["session.open"])
        writer.failJournalWrites(nil)
        // Retried alone after retryDelay, before any prompt event.
        let deadline = Date().addingTimeInterval(5)
        while try store.events(writerID: "w").count < 2, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        writer.appendLater(drafts[3])
        try await append(writer, drafts[1])
        writer.stop()
        let stored = try store.events(writerID: "w")
        #expect(stored.map(\.kind) == ["session.open", "result", "session.close", "statement"])
        #expect(stored.map(\.seq) == [1, 2, 3, 4])
        #expect(stored.allSatisfy(EventChain.isSelfConsistent))
    }

    @Test("while the store refuses events, they are recorded in the journal and loaded once it takes them")
    func storeRefusalDoesNotBlockRecording() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", lazyWindow: 0.01, retryDelay: 0.05, logger: Logger(label: "test"))
        let drafts = Self.session(SessionEvents())
        try await append(writer, drafts[0])
        #expect(writer.waitUntilLoaded())
        try await store.database.write { db in
            try db.execute(sql: "CREATE TRIGGER refuse_results BEFORE INSERT ON events WHEN NEW.kind = 'result' BEGIN SELECT RAISE(FAIL, 'no'); END")
        }
        writer.appendLater(drafts[2])
        try await Task.sleep(for: .milliseconds(100))
        try await append(writer, drafts[1])  // recorded although the store still refuses the result before it
        #expect(!writer.waitUntilLoaded(timeout: 0.2))
        #expect(try store.events(writerID: "w").map(\.kind) == ["session.open"], "the store keeps chain order")
        try await store.database.write { db in try db.execute(sql: "DROP TRIGGER refuse_results") }
        #expect(writer.waitUntilLoaded())
        writer.stop()
        #expect(try store.events(writerID: "w").map(\.kind) == ["session.open", "result", "statement"])
    }

    @Test("events a crash left in the journal are loaded by the next writer; a torn last write is not")
    func recoveryAfterCrash() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", logger: Logger(label: "test"))
        // The store refuses everything, so the events exist only in the journal when the writer stops:
        // as after kill -9 between the write and the load.
        try await store.database.write { db in try db.execute(sql: "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'no'); END") }
        let events = SessionEvents()
        for draft in Self.session(events) { try await append(writer, draft) }
        writer.stop()
        #expect(try store.events(writerID: "w").isEmpty)
        let files = EventJournal.files(of: path)
        #expect(files.count == 1, "the journal is kept when its events are not all in the store")
        // A write torn by the crash: the first half of another copy of the last record.
        let journal = try Data(contentsOf: URL(fileURLWithPath: files[0].path))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: files[0].path))
        try handle.seekToEnd()
        try handle.write(contentsOf: journal.suffix(40).prefix(20))
        try handle.close()
        try await store.database.write { db in try db.execute(sql: "DROP TRIGGER refuse") }

        let next = try EventWriter(store: store, writerID: "w", logger: Logger(label: "test"))
        let stored = try store.events(writerID: "w")
        #expect(stored.map(\.kind) == ["session.open", "statement", "result", "session.close"])
        #expect(stored.allSatisfy(EventChain.isSelfConsistent))
        let session = try #require(try store.sessions(SessionFilter(identity: "a1@example.com")).first)
        #expect(session.id == events.sessionID && session.outcome == "closed", "the session index comes back with the events")
        #expect(EventJournal.files(of: path).count == 1, "only the new writer's own journal is read at the next start")
        #expect(FileManager.default.fileExists(atPath: files[0].path + ".damaged"), "a damaged journal is kept for an auditor")
        try await append(next, Self.session(SessionEvents())[0])
        next.stop()
        #expect(try store.events(writerID: "w").map(\.seq) == Array(1...5), "the chain goes on after the recovered events")
    }

    @Test("the journal goes on in a new file when one is full, removes loaded files, and a crash's files load in order")
    func journalRotation() async throws {
        let store = try EventStore(path: path)
        var writer = try EventWriter(store: store, writerID: "w", loadWindow: 0.001, retryDelay: 0.001, journalFileBytes: 2048, logger: Logger(label: "test"))
        for _ in 0..<10 {
            for draft in Self.session(SessionEvents()) { try await append(writer, draft) }
            #expect(writer.waitUntilLoaded())
        }
        #expect(try store.events(writerID: "w").count == 40)
        #expect(EventJournal.files(of: path).count <= 2, "loaded files are removed as the journal goes on")
        // A crash with several files not loaded: the store refuses, so only the journal has them.
        try await store.database.write { db in try db.execute(sql: "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'no'); END") }
        for _ in 0..<10 {
            for draft in Self.session(SessionEvents()) { try await append(writer, draft) }
            try await Task.sleep(for: .milliseconds(5))  // several loads fail, so the files rotate
        }
        writer.stop()
        #expect(EventJournal.files(of: path).count >= 3)
        try await store.database.write { db in try db.execute(sql: "DROP TRIGGER refuse") }
        writer = try EventWriter(store: store, writerID: "w", logger: Logger(label: "test"))
        writer.stop()
        let events = try store.events(writerID: "w")
        #expect(events.map(\.seq) == Array(1...80))
        for (previous, event) in zip(events, events.dropFirst()) { #expect(event.prevHash == previous.hash) }
        #expect(EventJournal.files(of: path).isEmpty)
    }

    @Test("a journal a running writer holds is not recovered by anyone else")
    func liveJournalIsNotRecovered() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", loadWindow: 5, logger: Logger(label: "test"))
        try await append(writer, Self.session(SessionEvents())[0])
        #expect(try EventWriter.journalPending(store: store) == 1, "read-only: it counts what waits")
        #expect(throws: (any Error).self) { try EventWriter.recoverJournal(store: store, logger: Logger(label: "test")) }
        #expect(throws: (any Error).self, "a second writer on the same store") { try EventWriter(store: store, writerID: "w", logger: Logger(label: "test")) }
        #expect(EventJournal.files(of: path).count == 1)
        writer.stop()
        #expect(try store.events(writerID: "w").count == 1)
        #expect(try EventWriter.journalPending(store: store) == 0)
    }

    @Test("appends after stop fail instead of vanishing")
    func appendAfterStop() async throws {
        let writer = try EventWriter(store: try EventStore(path: path), writerID: "w", logger: Logger(label: "test"))
        writer.stop()
        await #expect(throws: RecorderError.self) { try await append(writer, Self.session(SessionEvents())[0]) }
    }
}
