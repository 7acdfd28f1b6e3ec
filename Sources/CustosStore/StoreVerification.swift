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

    /// The first problem found, if any.
    public var problem: ChainProblem? { writers.lazy.compactMap(\.problem).first ?? other }

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
            try forEachEvent(writerID: writerID, in: range) { verifier.feed($0) }
            reports.append(verifier.finish(tail: until == nil))
        }
        return VerificationResult(writers: reports)
    }
}
