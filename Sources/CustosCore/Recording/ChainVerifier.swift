import Foundation

/// What is wrong with a chain, at the first bad event (docs/evidence.md, "custos verify").
public struct ChainProblem: Error, Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        case modified, missing, reordered
        case signatureInvalid = "signature_invalid"
        case truncated
    }

    public var kind: Kind
    public var writerID: String
    /// The first bad position: the event's (or checkpoint's) `seq`, or the first absent one.
    public var seq: Int64
    /// The session of the event found there, when there is one.
    public var sessionID: String?
    public var detail: String

    public init(kind: Kind, writerID: String, seq: Int64, sessionID: String? = nil, detail: String) {
        self.kind = kind
        self.writerID = writerID
        self.seq = seq
        self.sessionID = sessionID
        self.detail = detail
    }
}

/// The outcome of checking one writer's chain (or the part of it that was asked for).
public struct ChainReport: Sendable, Equatable {
    public var writerID: String
    public var events = 0
    public var firstSeq: Int64?
    public var lastSeq: Int64?
    /// Checkpoints inside the checked range.
    public var checkpoints = 0
    /// The last `seq` a valid checkpoint covers, if any.
    public var signedThrough: Int64?
    /// Events after the last checkpoint: not a failure by itself.
    public var unsignedTail = 0
    /// Payloads removed by retention (store) ...
    public var pruned = 0
    /// ... or left out of a bundle because they are outside its scope.
    public var withheld = 0
    public var problem: ChainProblem?

    public init(writerID: String) { self.writerID = writerID }
}

/// Checks one writer's chain as it streams past, in the order given: links, payload hashes,
/// event hashes and checkpoints. It keeps only the running head, so a store of any size is
/// checked in constant memory. It records the first problem and ignores the rest.
public struct ChainVerifier {
    /// How an absent payload is judged.
    public enum Source: Sendable {
        /// A store: an absent payload needs a later `retention` event covering it.
        case store(retention: [RetentionMark])
        /// A bundle: absent payloads were withheld as outside its scope.
        case bundle
    }

    /// A `retention` event's promise: payloads of events up to `throughSeq` dated before `before`
    /// may be gone.
    public struct RetentionMark: Sendable {
        public var seq: Int64
        public var before: String
        public var throughSeq: Int64

        public init(seq: Int64, before: String, throughSeq: Int64) {
            self.seq = seq
            self.before = before
            self.throughSeq = throughSeq
        }

        /// The mark a `retention` event's payload states, or nil when it states none.
        public init?(event: Event) {
            guard event.kind == EventKind.retention.rawValue, let payload = event.payload,
                let object = (try? JSONSerialization.jsonObject(with: Data(payload.utf8))) as? [String: Any],
                let before = object["before"] as? String, let through = (object["through_seq"] as? NSNumber)?.int64Value,
                // The gateway removes only what is older than the event itself, and only what precedes it.
                before <= event.at, through < event.seq
            else { return nil }
            self.init(seq: event.seq, before: before, throughSeq: through)
        }
    }

    public private(set) var report: ChainReport
    private let source: Source
    private let trustedKey: String
    /// Checkpoints by the `seq` they sign, in order.
    private var checkpoints: [Int64: [Checkpoint]]
    private let allCheckpoints: [Checkpoint]
    /// The `seq` the next event should have and the hash it should link to; nil before the first
    /// event when the chain is checked from the middle (the first event's link is then trusted).
    private var expectedSeq: Int64?
    private var previousHash: String?
    /// Every `seq` the input holds, when it may come out of order (a bundle), to tell a moved
    /// event from an absent one.
    private let present: Set<Int64>?
    /// The range of `seq` a moved event may have come from.
    private let seqRange: ClosedRange<Int64>
    /// How far from its place a moved event is searched for, beyond what `locate` suggests:
    /// bounded, so that a hostile input cannot make the check run for ever.
    static let searchWindow: Int64 = 100_000

    /// - Parameters:
    ///   - start: the `seq` and link the first event must have; nil to trust the first event's own.
    ///   - present: for input that may be out of order, every `seq` it holds.
    ///   - seqRange: the `seq`s the input spans, searched when an event's hash fits another place.
    public init(
        writerID: String, trustedKey: String, checkpoints: [Checkpoint], source: Source, start: (seq: Int64, prevHash: String)?,
        present: Set<Int64>? = nil, seqRange: ClosedRange<Int64>
    ) {
        self.report = ChainReport(writerID: writerID)
        self.trustedKey = trustedKey
        self.source = source
        self.allCheckpoints = checkpoints.sorted { $0.seq < $1.seq }
        self.checkpoints = Dictionary(grouping: checkpoints, by: \.seq)
        self.expectedSeq = start?.seq
        self.previousHash = start?.prevHash
        self.present = present
        self.seqRange = seqRange
    }

    /// Checks the next event. `locate` gives the `seq` at which the input holds the event with a
    /// given hash, if any, to find where a moved event came from without trying every place.
    public mutating func feed(_ event: Event, locate: (String) -> Int64? = { _ in nil }) {
        guard report.problem == nil else { return }
        guard event.seq >= 1, event.seq < Int64.max else {
            report.events += 1
            return fail(.modified, max(1, expectedSeq ?? 1), event, "seq \(event.seq) is out of range")
        }
        let expected = expectedSeq ?? event.seq
        report.events += 1
        if report.firstSeq == nil { report.firstSeq = expected }
        if event.seq != expected {
            if let present, present.contains(expected) {
                return fail(.reordered, expected, event, "event seq \(event.seq) stands where seq \(expected) belongs")
            }
            if event.seq < expected {
                return fail(.reordered, expected, event, "event seq \(event.seq) comes after seq \(expected - 1)")
            }
            return fail(.missing, expected, nil, "seq \(expected) is absent (the next event present is seq \(event.seq))")
        }
        if let payload = event.payload {
            if EventChain.sha256Hex(payload.utf8) != event.payloadHash {
                return fail(.modified, event.seq, event, "the payload does not match its payload_hash")
            }
        } else {
            switch source {
            case .bundle:
                report.withheld += 1
            case .store(let marks):
                guard marks.contains(where: { $0.seq > event.seq && $0.throughSeq >= event.seq && event.at < $0.before }) else {
                    return fail(.modified, event.seq, event, "the payload was removed, and no retention event covers it")
                }
                report.pruned += 1
            }
        }
        if EventChain.eventHash(event, seq: event.seq) != event.hash {
            // An event whose hash fits another place was moved there; otherwise it was altered.
            if let origin = origin(of: event, locate: locate) {
                return fail(.reordered, event.seq, event, "the event at seq \(event.seq) is the event of seq \(origin)")
            }
            return fail(.modified, event.seq, event, "the hash does not match the event's header")
        }
        if let previousHash, event.prevHash != previousHash {
            // Both events are self-consistent: one of them was rewritten (its hash recomputed).
            guard event.seq > (report.firstSeq ?? 1) else {
                return fail(.modified, event.seq, event, "the first event does not link to the chain before it")
            }
            return fail(.modified, event.seq - 1, nil, "the hash of seq \(event.seq - 1) is not the one seq \(event.seq) links to (an event was rewritten)")
        }
        for checkpoint in checkpoints[event.seq] ?? [] {
            report.checkpoints += 1
            guard checkpoint.isValid(trustedKey: trustedKey) else {
                return fail(.signatureInvalid, checkpoint.seq, event, signatureDetail(checkpoint))
            }
            guard checkpoint.hash == event.hash else {
                return fail(.modified, checkpoint.seq, event, "the checkpoint signed at \(checkpoint.at) names another hash for this seq: the chain was rewritten up to here")
            }
            report.signedThrough = event.seq
        }
        report.lastSeq = event.seq
        expectedSeq = event.seq + 1
        previousHash = event.hash
    }

    /// Ends the check: checkpoints past the last event mean a truncated chain when `tail` says
    /// the input should reach the chain's end.
    public mutating func finish(tail: Bool) -> ChainReport {
        if report.problem == nil && tail {
            let last = report.lastSeq ?? (expectedSeq.map { $0 - 1 } ?? 0)
            for checkpoint in allCheckpoints where checkpoint.seq > last {
                guard checkpoint.isValid(trustedKey: trustedKey) else {
                    fail(.signatureInvalid, checkpoint.seq, nil, signatureDetail(checkpoint))
                    break
                }
                fail(.truncated, last + 1, nil, "the chain ends at seq \(last), but a checkpoint signed at \(checkpoint.at) vouches for seq \(checkpoint.seq)")
                break
            }
        }
        if let last = report.lastSeq {
            report.unsignedTail = Int(last - (report.signedThrough ?? ((report.firstSeq ?? 1) - 1)))
        }
        return report
    }

    /// Where a self-inconsistent event came from, if its hash fits another place: first where its
    /// link points, then the places around its own.
    private func origin(of event: Event, locate: (String) -> Int64?) -> Int64? {
        var candidates: [Int64] = []
        if event.prevHash == EventChain.genesis {
            candidates.append(1)
        } else if let before = locate(event.prevHash), before < Int64.max {
            candidates.append(before + 1)
        }
        let low = max(seqRange.lowerBound, event.seq > Int64.min + Self.searchWindow ? event.seq - Self.searchWindow : Int64.min)
        let high = min(seqRange.upperBound, event.seq < Int64.max - Self.searchWindow ? event.seq + Self.searchWindow : Int64.max)
        if low <= high { candidates += Array(low...high) }
        return candidates.first { $0 != event.seq && EventChain.eventHash(event, seq: $0) == event.hash }
    }

    private func signatureDetail(_ checkpoint: Checkpoint) -> String {
        checkpoint.publicKey == trustedKey
            ? "the checkpoint's signature does not verify" : "the checkpoint is signed by another key (\(checkpoint.publicKey.prefix(16))…)"
    }

    private mutating func fail(_ kind: ChainProblem.Kind, _ seq: Int64, _ event: Event?, _ detail: String) {
        report.problem = ChainProblem(kind: kind, writerID: report.writerID, seq: seq, sessionID: event?.sessionID, detail: detail)
    }
}

extension EventChain {
    /// An event's header hash as if it stood at `seq`.
    public static func eventHash(_ event: Event, seq: Int64) -> String {
        eventHash(writerID: event.writerID, seq: seq, at: event.at, sessionID: event.sessionID, kind: event.kind, payloadHash: event.payloadHash, prevHash: event.prevHash)
    }
}
