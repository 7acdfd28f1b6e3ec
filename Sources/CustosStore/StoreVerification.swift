import CustosCore
import Foundation

/// The outcome of `custos verify`: one report per writer.
public struct VerificationResult: Sendable {
    public var writers: [ChainReport]
    /// Problems outside any writer's chain (a bundle's policies).
    public var other: ChainProblem?

    public init(writers: [ChainReport], other: ChainProblem? = nil) {
        self.writers = writers
        self.other = other
    }

    /// The first problem found, if any; one outside the chains (a bundle's manifest) first, since
    /// it puts everything else in doubt.
    public var problem: ChainProblem? { other ?? writers.lazy.compactMap(\.problem).first }

    /// Events after the last checkpoint, over all writers.
    public var unsignedTail: Int { writers.reduce(0) { $0 + $1.unsignedTail } }

    /// The result as `custos verify --json` prints it.
    public var canonical: CanonicalJSON {
        func problem(_ problem: ChainProblem?) -> CanonicalJSON {
            guard let problem else { return .null }
            return [
                "kind": .string(problem.kind.rawValue), "writer_id": .string(problem.writerID), "seq": .int(problem.seq),
                "session_id": .optional(problem.sessionID), "detail": .string(problem.detail),
            ]
        }
        func optional(_ value: Int64?) -> CanonicalJSON { value.map(CanonicalJSON.int) ?? .null }
        return [
            "ok": .bool(self.problem == nil),
            "problem": problem(self.problem),
            "unsigned_tail": .int(Int64(unsignedTail)),
            "writers": .array(
                writers.map {
                    [
                        "writer_id": .string($0.writerID), "events": .int(Int64($0.events)), "first_seq": optional($0.firstSeq),
                        "last_seq": optional($0.lastSeq), "checkpoints": .int(Int64($0.checkpoints)), "signed_through": optional($0.signedThrough),
                        "unsigned_tail": .int(Int64($0.unsignedTail)), "pruned": .int(Int64($0.pruned)), "withheld": .int(Int64($0.withheld)),
                        "problem": problem($0.problem),
                    ]
                }),
        ]
    }
}

extension EventStore {
    /// Checks every writer's chain in the store against `trustedKey`, streaming. With `since` or
    /// `until`, only events dated in that range, linked to the event before it; truncation is
    /// then checked only when `until` is absent.
    public func verify(trustedKey: String, since: Date? = nil, until: Date? = nil) throws -> VerificationResult {
        var reports: [ChainReport] = []
        for writerID in try writers() {
            let checkpoints = try checkpoints(writerID: writerID)
            guard let all = try seqBounds(writerID: writerID) else {
                // Checkpoints but no events: everything they vouch for is gone.
                var verifier = ChainVerifier(
                    writerID: writerID, trustedKey: trustedKey, checkpoints: checkpoints, source: .store(retention: []), start: (1, EventChain.genesis),
                    seqRange: 1...1)
                reports.append(verifier.finish(tail: until == nil))
                continue
            }
            var range = all
            var start: (seq: Int64, prevHash: String)? = (1, EventChain.genesis)
            if since != nil || until != nil {
                guard let bounded = try seqBounds(writerID: writerID, since: since, until: until) else {
                    reports.append(ChainReport(writerID: writerID))
                    continue
                }
                range = bounded
                if bounded.lowerBound > 1 {
                    // Linked to the event before the range when it is there; otherwise its first event's
                    // own link is trusted (and a gap before it is outside what was asked).
                    start = try eventHash(writerID: writerID, seq: bounded.lowerBound - 1).map { (bounded.lowerBound, $0) }
                }
            }
            var verifier = ChainVerifier(
                writerID: writerID, trustedKey: trustedKey, checkpoints: checkpoints.filter { range.contains($0.seq) || $0.seq > range.upperBound },
                source: .store(retention: try retentionMarks(writerID: writerID)), start: start, seqRange: all)
            try forEachEvent(writerID: writerID, in: range) { verifier.feed($0, locate: $1) }
            reports.append(verifier.finish(tail: until == nil))
        }
        return VerificationResult(writers: reports)
    }
}

extension EventStore {
    /// Where a writer may resume: its last checkpoint valid under `trustedKey`, and its head.
    public struct Resume: Sendable {
        public var signedThrough: Int64
        public var head: Int64
        /// Events a crash left unsigned, which the next checkpoint will sign.
        public var unsigned: ClosedRange<Int64>? { head > signedThrough ? (signedThrough + 1)...head : nil }
    }

    /// Checks, before a writer extends and signs its chain again, that the store still holds what
    /// it last signed (`anchor`, kept outside the store) and that every event after its last valid
    /// checkpoint links and hashes correctly. Signing a chain someone rewrote while the gateway was
    /// down would vouch for the forgery, so a problem here stops the gateway.
    ///
    /// A `retention` event in that unsigned stretch is accepted only if it removes no more than
    /// `retention` (the configured age) allows: anyone can append a well-linked event, so one
    /// claiming a later cutoff than this gateway would write is a forgery.
    public func resumeCheck(writerID: String, trustedKey: String, anchor: (seq: Int64, hash: String)?, retention: TimeInterval?) throws
        -> Result<Resume, ChainProblem>
    {
        let checkpoints = try checkpoints(writerID: writerID).filter { $0.isValid(trustedKey: trustedKey) }
        if let anchor {
            guard checkpoints.contains(where: { $0.seq == anchor.seq && $0.hash == anchor.hash }),
                try eventHash(writerID: writerID, seq: anchor.seq) == anchor.hash
            else {
                return .failure(
                    ChainProblem(
                        kind: .truncated, writerID: writerID, seq: anchor.seq,
                        detail: "the store no longer holds the checkpoint this gateway signed last (seq \(anchor.seq))"))
            }
        }
        // The last checkpoint that still matches its event; everything after it is checked.
        var last: Checkpoint?
        for checkpoint in checkpoints.reversed() where try eventHash(writerID: writerID, seq: checkpoint.seq) == checkpoint.hash {
            last = checkpoint
            break
        }
        if let anchor, let found = last, found.seq < anchor.seq {
            return .failure(ChainProblem(kind: .modified, writerID: writerID, seq: anchor.seq, detail: "the signed head no longer matches its checkpoint"))
        }
        let head = try seqBounds(writerID: writerID)?.upperBound ?? 0
        let from = (last?.seq ?? 0) + 1
        guard head >= from else { return .success(Resume(signedThrough: last?.seq ?? 0, head: head)) }
        var verifier = ChainVerifier(
            writerID: writerID, trustedKey: trustedKey, checkpoints: [], source: .store(retention: try retentionMarks(writerID: writerID)),
            start: (from, last?.hash ?? EventChain.genesis), seqRange: from...head)
        var foreign: ChainProblem?
        try forEachEvent(writerID: writerID, in: from...head) { event, locate in
            verifier.feed(event, locate: locate)
            if foreign == nil, event.kind == EventKind.retention.rawValue, !Self.isOwnRetention(event, age: retention) {
                foreign = ChainProblem(
                    kind: .modified, writerID: writerID, seq: event.seq, sessionID: event.sessionID,
                    detail: "an unsigned retention event removes more than recording.retention allows")
            }
        }
        if let problem = verifier.finish(tail: false).problem ?? foreign { return .failure(problem) }
        return .success(Resume(signedThrough: last?.seq ?? 0, head: head))
    }
}

extension EventStore {
    /// Whether a retention event's cutoff is one this gateway's configured age would give.
    static func isOwnRetention(_ event: Event, age: TimeInterval?) -> Bool {
        guard let age, let mark = ChainVerifier.RetentionMark(event: event), let at = Timestamp.parse(event.at),
            let before = Timestamp.parse(mark.before)
        else { return false }
        // A minute of slack for the time between reading the clock and recording the event.
        return before.timeIntervalSince(at) <= -age + 60
    }
}
