import Crypto
import Foundation

/// What a session asks the recorder to write: the parts of an ``Event`` that the writer does not
/// assign itself (sequence, previous hash and hashes are the writer's, in commit order).
public struct EventDraft: Sendable {
    /// The kind of event (see ``EventKind``).
    public var kind: EventKind
    /// The session this event belongs to.
    public var sessionID: String
    /// When it happened.
    public var at: Date
    /// The payload, already masked, as its canonical bytes (what is hashed).
    public var payload: [UInt8]
    /// How the session index (the searchable projection of sessions) changes with this event.
    public var index: SessionIndexUpdate?
    /// For approval events: the approval's state after the event, kept by the store so that
    /// approvals outlive a restart.
    public var approval: Approval?

    public init(kind: EventKind, sessionID: String, at: Date = Date(), payload: CanonicalJSON, index: SessionIndexUpdate? = nil, approval: Approval? = nil) {
        self.init(kind: kind, sessionID: sessionID, at: at, canonicalPayload: payload.bytes, index: index, approval: approval)
    }

    /// A draft whose payload is already canonical JSON (``CanonicalJSONWriter``).
    public init(kind: EventKind, sessionID: String, at: Date = Date(), canonicalPayload: [UInt8], index: SessionIndexUpdate? = nil, approval: Approval? = nil) {
        self.kind = kind
        self.sessionID = sessionID
        self.at = at
        self.payload = canonicalPayload
        self.index = index
        self.approval = approval
    }
}

/// The kinds of recorded events.
public enum EventKind: String, Sendable, Codable, CaseIterable {
    case sessionOpen = "session.open"
    case sessionRefused = "session.refused"
    case statement = "statement"
    case result = "result"
    case sessionClose = "session.close"
    case approvalRequested = "approval.requested"
    case approvalDecided = "approval.decided"
    case approvalExpired = "approval.expired"
    case approvalUsed = "approval.used"
    /// Payloads before a time are being removed (docs/evidence.md, "Retention").
    case retention = "retention"
    /// A restart found events its writer had not signed (a crash): they are signed from here on.
    case writerRecovered = "writer.recovered"
}

/// A committed, hash-chained event as stored.
public struct Event: Sendable, Equatable, Codable {
    public var writerID: String
    public var seq: Int64
    public var at: String
    public var sessionID: String
    public var kind: String
    /// The canonical JSON text; nil once retention removed it (its hash stays).
    public var payload: String?
    public var payloadHash: String
    public var prevHash: String
    public var hash: String

    public init(writerID: String, seq: Int64, at: String, sessionID: String, kind: String, payload: String?, payloadHash: String, prevHash: String, hash: String) {
        self.writerID = writerID
        self.seq = seq
        self.at = at
        self.sessionID = sessionID
        self.kind = kind
        self.payload = payload
        self.payloadHash = payloadHash
        self.prevHash = prevHash
        self.hash = hash
    }
}

extension Event {
    enum CodingKeys: String, CodingKey {
        case writerID = "writer_id", seq, at, sessionID = "session_id", kind, payload, payloadHash = "payload_hash", prevHash = "prev_hash", hash
    }

    /// Encodes as one line of a bundle's `events.jsonl`, `payload` null when absent.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(writerID, forKey: .writerID)
        try container.encode(seq, forKey: .seq)
        try container.encode(at, forKey: .at)
        try container.encode(sessionID, forKey: .sessionID)
        try container.encode(kind, forKey: .kind)
        try container.encode(payload, forKey: .payload)
        try container.encode(payloadHash, forKey: .payloadHash)
        try container.encode(prevHash, forKey: .prevHash)
        try container.encode(hash, forKey: .hash)
    }

    /// The event as JSON, `payload` as the stored text (hash it as it is).
    public var canonical: CanonicalJSON {
        [
            "writer_id": .string(writerID), "seq": .int(seq), "at": .string(at), "session_id": .string(sessionID), "kind": .string(kind),
            "payload": .optional(payload), "payload_hash": .string(payloadHash), "prev_hash": .string(prevHash), "hash": .string(hash),
        ]
    }

    /// The event as one canonical JSON line (docs/evidence.md, "Evidence bundles").
    public var line: String { canonical.text }
}

/// The hash chain's arithmetic, exactly as docs/evidence.md defines it.
public enum EventChain {
    /// The previous hash of a writer's first event.
    public static let genesis = String(repeating: "0", count: 64)

    /// Lowercase hex SHA-256 of bytes.
    public static func sha256Hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        if let hex = bytes.withContiguousStorageIfAvailable({ sha256Hex(UnsafeRawBufferPointer($0)) }) { return hex }
        return Array(bytes).withUnsafeBytes { sha256Hex($0) }
    }

    static func sha256Hex(_ bytes: UnsafeRawBufferPointer) -> String {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { digest in
            KeyedHash.sha256(bytes, into: digest.baseAddress!)
            return hex(UnsafeRawBufferPointer(digest))
        }
    }

    /// The event hash over its header fields and payload hash.
    public static func eventHash(writerID: String, seq: Int64, at: String, sessionID: String, kind: String, payloadHash: String, prevHash: String) -> String {
        // The header's bytes, written into one buffer (this runs for every event, under the writer's lock).
        var header: [UInt8] = []
        header.reserveCapacity(64 + writerID.utf8.count + at.utf8.count + sessionID.utf8.count + kind.utf8.count + 2 * 64)
        header.append(contentsOf: headerLabel)
        func line(_ field: String) {
            header.append(contentsOf: field.utf8)
            header.append(0x0A)
        }
        line(writerID)
        CanonicalJSON.writeInt(seq, into: &header)
        header.append(0x0A)
        line(at)
        line(sessionID)
        line(kind)
        line(payloadHash)
        header.append(contentsOf: prevHash.utf8)
        return header.withUnsafeBytes { sha256Hex($0) }
    }

    private static let headerLabel = Array("custos.event.v1\n".utf8)

    /// The parts of an event that do not depend on its place in a chain: computed before the
    /// writer's lock is taken, so that only the header hash is computed under it.
    public struct Prepared: Sendable {
        public var at: String
        public var payload: String
        public var payloadHash: String
    }

    /// Renders and hashes a draft's payload and formats its time.
    public static func prepare(_ draft: EventDraft) -> Prepared {
        let payload = draft.payload
        return Prepared(at: Timestamp.format(draft.at), payload: String(decoding: payload, as: UTF8.self), payloadHash: sha256Hex(payload))
    }

    /// Builds the next event of a chain from a draft.
    public static func seal(_ draft: EventDraft, writerID: String, seq: Int64, prevHash: String) -> Event {
        seal(draft, prepared: prepare(draft), writerID: writerID, seq: seq, prevHash: prevHash)
    }

    /// Builds the next event of a chain from a draft already ``prepare(_:)``d.
    public static func seal(_ draft: EventDraft, prepared: Prepared, writerID: String, seq: Int64, prevHash: String) -> Event {
        let kind = draft.kind.rawValue
        let hash = eventHash(writerID: writerID, seq: seq, at: prepared.at, sessionID: draft.sessionID, kind: kind, payloadHash: prepared.payloadHash, prevHash: prevHash)
        return Event(
            writerID: writerID, seq: seq, at: prepared.at, sessionID: draft.sessionID, kind: kind, payload: prepared.payload, payloadHash: prepared.payloadHash,
            prevHash: prevHash, hash: hash)
    }

    /// Checks one event's own hashes (not its link to the previous event).
    public static func isSelfConsistent(_ event: Event) -> Bool {
        (event.payload.map { sha256Hex($0.utf8) == event.payloadHash } ?? true)
            && eventHash(writerID: event.writerID, seq: event.seq, at: event.at, sessionID: event.sessionID, kind: event.kind, payloadHash: event.payloadHash, prevHash: event.prevHash) == event.hash
    }

    static func hex<D: ContiguousBytes>(_ digest: D) -> String {
        digest.withUnsafeBytes { hex($0) }
    }

    /// Lowercase hex, written straight into the string's storage (one allocation).
    static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        String(unsafeUninitializedCapacity: 2 * bytes.count) { out in
            for (index, byte) in bytes.enumerated() {
                out[2 * index] = hexDigit(byte >> 4)
                out[2 * index + 1] = hexDigit(byte & 0xF)
            }
            return 2 * bytes.count
        }
    }

    @inline(__always) static func hexDigit(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? 0x30 + nibble : 0x57 + nibble
    }
}

/// RFC 3339 timestamps in UTC with exactly six fractional digits, the form events are hashed in.
public enum Timestamp {
    /// Formats a date as `2026-11-30T04:27:47.123456Z`.
    public static func format(_ date: Date) -> String {
        let micros = Int64((date.timeIntervalSince1970 * 1_000_000).rounded(.down))
        let seconds = micros >= 0 ? micros / 1_000_000 : (micros - 999_999) / 1_000_000
        let fraction = micros - seconds * 1_000_000
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        // Written digit by digit: this runs for every event, on the session's thread.
        var out = [UInt8](repeating: UInt8(ascii: "0"), count: 27)
        func put(_ value: Int, at end: Int, width: Int) {
            var value = value
            for position in stride(from: end, to: end - width, by: -1) {
                out[position] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
            }
        }
        let year = Int(parts.tm_year) + 1900
        guard (0...9999).contains(year) else { return "\(year)-\(parts.tm_mon + 1)-\(parts.tm_mday)T\(parts.tm_hour):\(parts.tm_min):\(parts.tm_sec).\(fraction)Z" }
        put(year, at: 3, width: 4)
        put(Int(parts.tm_mon) + 1, at: 6, width: 2)
        put(Int(parts.tm_mday), at: 9, width: 2)
        put(Int(parts.tm_hour), at: 12, width: 2)
        put(Int(parts.tm_min), at: 15, width: 2)
        put(Int(parts.tm_sec), at: 18, width: 2)
        put(Int(fraction), at: 25, width: 6)
        for (position, separator) in [(4, "-"), (7, "-"), (10, "T"), (13, ":"), (16, ":"), (19, "."), (26, "Z")] as [(Int, Unicode.Scalar)] {
            out[position] = UInt8(ascii: separator)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Parses RFC 3339 (with or without fractional seconds, `Z` or an offset).
    public static func parse(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }
}
