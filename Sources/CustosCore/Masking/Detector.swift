/// Content detectors for personal data and secrets in values no rule names.
public enum Detector: String, Sendable, Equatable, Hashable, CaseIterable, Codable {
    case email, card, ssn, phone, iban, secret

    /// Tie-break when two detectors find spans with the same start and length: the more specific wins.
    var priority: Int {
        switch self {
        case .secret: 0
        case .iban: 1
        case .card: 2
        case .ssn: 3
        case .email: 4
        case .phone: 5
        }
    }
}

/// A detected span: byte offsets into the UTF-8 input.
public struct DetectedSpan: Sendable, Equatable {
    public var range: Range<Int>
    public var detector: Detector

    public init(range: Range<Int>, detector: Detector) {
        self.range = range
        self.detector = detector
    }
}

/// A set of detectors as bits, so the per-value path never builds a `Set`.
struct DetectorMask: Equatable {
    var bits: UInt8 = 0

    init() {}

    init<S: Sequence>(_ detectors: S) where S.Element == Detector {
        for detector in detectors { insert(detector) }
    }

    var isEmpty: Bool { bits == 0 }
    func contains(_ detector: Detector) -> Bool { bits & (1 << detector.priority) != 0 }
    mutating func insert(_ detector: Detector) { bits |= 1 << detector.priority }
}

/// The detectors: a cheap pre-scan, then hand-written byte scanners (no regular expressions).
///
/// Overlaps resolve to the earlier span, then the longer, then by detector priority
/// (secret, iban, card, ssn, email, phone): an IBAN's digits are never also a card, and
/// a JWT or PEM block is masked whole.
public enum Detectors {
    /// Every span of `bytes` that one of `enabled` detects, sorted by start, non-overlapping.
    /// Values without a candidate (no `@`, no long digit run, no secret marker) return `[]`
    /// after one pass and without allocating.
    public static func scan(_ bytes: UnsafeRawBufferPointer, enabled: Set<Detector>) -> [DetectedSpan] {
        scan(bytes, mask: DetectorMask(enabled))
    }

    /// ``scan(_:enabled:)-(UnsafeRawBufferPointer,_)`` over a string's UTF-8.
    public static func scan(_ text: String, enabled: Set<Detector>) -> [DetectedSpan] {
        var text = text
        return text.withUTF8 { scan(UnsafeRawBufferPointer($0), enabled: enabled) }
    }

    static func scan(_ bytes: UnsafeRawBufferPointer, mask: DetectorMask) -> [DetectedSpan] {
        let candidates = prescan(bytes, mask: mask)
        if candidates.isEmpty { return [] }
        var scanner = SpanScanner(bytes: bytes)
        if candidates.contains(.secret) { scanner.secrets() }
        if candidates.contains(.iban) { scanner.ibans() }
        if candidates.contains(.card) { scanner.cards() }
        if candidates.contains(.ssn) { scanner.ssns() }
        if candidates.contains(.email) { scanner.emails() }
        if candidates.contains(.phone) { scanner.phones() }
        return resolve(scanner.found)
    }

    /// Which enabled detectors could find anything: one pass, no allocation.
    static func prescan(_ b: UnsafeRawBufferPointer, mask: DetectorMask) -> DetectorMask {
        var result = DetectorMask()
        var run = 0, separators = 0, longestRun = 0, word = 0
        var at = false, ibanStart = false, secret = false
        let wantSecret = mask.contains(.secret), wantIBAN = mask.contains(.iban)
        for i in 0..<b.count {
            let c = b[i]
            if MaskByte.isDigit(c) {
                run += 1
                separators = 0
                if run > longestRun { longestRun = run }
            } else if c == 0x20 || c == 0x2D || c == 0x2E || c == 0x28 || c == 0x29 {  // space - . ( )
                // Phone formats put up to two separators between digit groups ("(555) 010").
                separators += 1
                if separators > 2 { run = 0 }
            } else {
                run = 0
                separators = 0
                if c == 0x40 { at = true }
            }
            if MaskByte.isAlnum(c) {
                word += 1
                // An IBAN starts a word with two letters and two digits.
                if word == 4, wantIBAN, MaskByte.isDigit(c), MaskByte.isDigit(b[i - 1]), MaskByte.isLetter(b[i - 2]), MaskByte.isLetter(b[i - 3]) {
                    ibanStart = true
                }
            } else {
                word = 0
            }
            if wantSecret, !secret, SpanScanner.secretMarker(b, at: i) { secret = true }
        }
        if at, mask.contains(.email) { result.insert(.email) }
        if longestRun >= 13, mask.contains(.card) { result.insert(.card) }
        if longestRun >= 9, mask.contains(.ssn) { result.insert(.ssn) }
        // International numbers start at 8 digits ("+" and 8–15 digits).
        if longestRun >= 8, mask.contains(.phone) { result.insert(.phone) }
        if ibanStart { result.insert(.iban) }
        if secret { result.insert(.secret) }
        return result
    }

    static func resolve(_ found: [DetectedSpan]) -> [DetectedSpan] {
        if found.isEmpty { return [] }
        let sorted = found.sorted { a, b in
            if a.range.lowerBound != b.range.lowerBound { return a.range.lowerBound < b.range.lowerBound }
            if a.range.count != b.range.count { return a.range.count > b.range.count }
            return a.detector.priority < b.detector.priority
        }
        var result: [DetectedSpan] = []
        var end = 0
        for span in sorted where span.range.lowerBound >= end {
            result.append(span)
            end = span.range.upperBound
        }
        return result
    }

    /// Luhn check of a digit string (separators ' ' and '-' ignored; any other byte fails).
    public static func luhnValid<C: Collection>(_ digits: C) -> Bool where C.Element == UInt8 {
        var count = 0
        for c in digits {
            if MaskByte.isDigit(c) {
                count += 1
            } else if c != 0x20 && c != 0x2D {
                return false
            }
        }
        guard count >= 2 else { return false }
        // Every second digit from the right is doubled; from the left that starts at the first
        // digit exactly when the count is even.
        var double = count % 2 == 0
        var sum = 0
        for c in digits where MaskByte.isDigit(c) {
            var d = Int(c &- 0x30)
            if double {
                d *= 2
                if d > 9 { d -= 9 }
            }
            sum += d
            double.toggle()
        }
        return sum % 10 == 0
    }

    /// ISO 13616 IBAN check (spaces ignored, case-insensitive): 15–34 alphanumerics, two letters,
    /// check digits 02–98, and the ISO 7064 mod-97 remainder 1.
    public static func ibanValid<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        var head: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
        var count = 0
        var remainder = 0
        for byte in bytes where byte != 0x20 {
            let c = MaskByte.upper(byte)
            guard MaskByte.isAlnum(c) else { return false }
            switch count {
            case 0: head.0 = c
            case 1: head.1 = c
            case 2: head.2 = c
            case 3: head.3 = c
            default: remainder = ibanFold(remainder, c)
            }
            count += 1
        }
        guard (15...34).contains(count), MaskByte.isLetter(head.0), MaskByte.isLetter(head.1),
            MaskByte.isDigit(head.2), MaskByte.isDigit(head.3)
        else { return false }
        let check = Int(head.2 &- 0x30) * 10 + Int(head.3 &- 0x30)
        guard (2...98).contains(check) else { return false }
        // The country code and check digits move to the end before the remainder is taken.
        for c in [head.0, head.1, head.2, head.3] { remainder = ibanFold(remainder, c) }
        return remainder == 1
    }

    /// Appends one IBAN character (digit, or letter as 10–35) to a running mod-97 remainder.
    private static func ibanFold(_ remainder: Int, _ c: UInt8) -> Int {
        MaskByte.isDigit(c) ? (remainder * 10 + Int(c &- 0x30)) % 97 : (remainder * 100 + Int(c &- 0x41) + 10) % 97
    }
}
