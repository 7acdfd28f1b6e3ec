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
    /// The payload, already masked; hashed as its canonical bytes.
    public var payload: CanonicalJSON
    /// How the session index (the searchable projection of sessions) changes with this event.
    public var index: SessionIndexUpdate?
    /// For approval events: the approval's state after the event, kept by the store so that
    /// approvals outlive a restart.
    public var approval: Approval?

    public init(kind: EventKind, sessionID: String, at: Date = Date(), payload: CanonicalJSON, index: SessionIndexUpdate? = nil, approval: Approval? = nil) {
        self.kind = kind
        self.sessionID = sessionID
        self.at = at
        self.payload = payload
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
}

/// A committed, hash-chained event as stored.
public struct Event: Sendable, Equatable, Codable {
    public var writerID: String
    public var seq: Int64
    public var at: String
    public var sessionID: String
    public var kind: String
    public var payload: String
    public var payloadHash: String
    public var prevHash: String
    public var hash: String

    public init(writerID: String, seq: Int64, at: String, sessionID: String, kind: String, payload: String, payloadHash: String, prevHash: String, hash: String) {
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

/// The hash chain's arithmetic, exactly as docs/evidence.md defines it.
public enum EventChain {
    /// The previous hash of a writer's first event.
    public static let genesis = String(repeating: "0", count: 64)

    /// Lowercase hex SHA-256 of bytes.
    public static func sha256Hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        let digest = SHA256.hash(data: Array(bytes))
        return hex(digest)
    }

    /// The event hash over its header fields and payload hash.
    public static func eventHash(writerID: String, seq: Int64, at: String, sessionID: String, kind: String, payloadHash: String, prevHash: String) -> String {
        let header = "custos.event.v1\n\(writerID)\n\(seq)\n\(at)\n\(sessionID)\n\(kind)\n\(payloadHash)\n\(prevHash)"
        return sha256Hex(header.utf8)
    }

    /// Builds the next event of a chain from a draft.
    public static func seal(_ draft: EventDraft, writerID: String, seq: Int64, prevHash: String) -> Event {
        let payload = draft.payload.bytes
        let payloadHash = sha256Hex(payload)
        let at = Timestamp.format(draft.at)
        let hash = eventHash(writerID: writerID, seq: seq, at: at, sessionID: draft.sessionID, kind: draft.kind.rawValue, payloadHash: payloadHash, prevHash: prevHash)
        return Event(writerID: writerID, seq: seq, at: at, sessionID: draft.sessionID, kind: draft.kind.rawValue, payload: String(decoding: payload, as: UTF8.self), payloadHash: payloadHash, prevHash: prevHash, hash: hash)
    }

    /// Checks one event's own hashes (not its link to the previous event).
    public static func isSelfConsistent(_ event: Event) -> Bool {
        sha256Hex(event.payload.utf8) == event.payloadHash
            && eventHash(writerID: event.writerID, seq: event.seq, at: event.at, sessionID: event.sessionID, kind: event.kind, payloadHash: event.payloadHash, prevHash: event.prevHash) == event.hash
    }

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in digest {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
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
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        let frac = String(fraction)
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))."
            + String(repeating: "0", count: 6 - frac.count) + frac + "Z"
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
