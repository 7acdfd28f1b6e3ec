/// How a masked value is shown.
public enum MaskingStrategy: String, Sendable, Equatable, Hashable, CaseIterable, Codable {
    /// `[redacted]` (a whole value) or `[redacted:<detector>]` (a detected span).
    case redact
    /// All letters and digits but the last four become `*`.
    case partial
    /// `h:` and 16 hex digits of a keyed hash: joinable across rows, not reversible.
    case hash
    /// SQL NULL.
    case null

    /// Order by how little is shown; when several rules could apply, the strictest is used.
    var strictness: Int {
        switch self {
        case .partial: 0
        case .hash: 1
        case .redact: 2
        case .null: 3
        }
    }
}

/// ASCII byte classes shared by the detectors and the masker.
enum MaskByte {
    @inline(__always) static func isDigit(_ c: UInt8) -> Bool { c &- 0x30 < 10 }
    @inline(__always) static func isLetter(_ c: UInt8) -> Bool { (c | 0x20) &- 0x61 < 26 }
    @inline(__always) static func isAlnum(_ c: UInt8) -> Bool { isDigit(c) || isLetter(c) }
    @inline(__always) static func lower(_ c: UInt8) -> UInt8 { isLetter(c) ? c | 0x20 : c }
    @inline(__always) static func upper(_ c: UInt8) -> UInt8 { isLetter(c) ? c & ~0x20 : c }
    @inline(__always) static func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D }
    static let star = UInt8(ascii: "*")
}
