import Crypto
import Foundation

/// Applies masking strategies to text. Values are UTF-8 bytes. Stateless apart from the key; Sendable.
///
/// Every output is a fixed point: masking it again with the same strategy (or detector
/// strategies) returns it unchanged, so a value masked twice on its way (a view over a masked
/// column, a re-sent result) reads the same.
public struct Masker: Sendable {
    let hashKey: SymmetricKey
    /// The key's HMAC pads, hashed once: a value costs two hash finalizations, not a key set-up.
    let keyed: KeyedHash

    public init(hashKey: SymmetricKey) {
        self.hashKey = hashKey
        self.keyed = KeyedHash(key: hashKey)
    }

    /// The masked form of a whole text value; nil means SQL NULL (strategy `.null`).
    ///  - redact: `[redacted]`
    ///  - partial: see ``partial(_:)``; `4111 1111 1111 1111` gives `**** **** **** 1111`.
    ///  - hash: `h:` and the first 16 lowercase hex digits of HMAC-SHA256(key, value); a value
    ///    that already is `h:` and 16 lowercase hex digits stays.
    ///  - null: nil
    public func mask(_ value: UnsafeRawBufferPointer, strategy: MaskingStrategy) -> [UInt8]? {
        switch strategy {
        case .redact: Self.redacted
        case .partial: Self.partial(value)
        case .hash: Self.isHashToken(value) ? Array(value) : hash(value)
        case .null: nil
        }
    }

    /// ``mask(_:strategy:)-(UnsafeRawBufferPointer,_)`` over a string's UTF-8.
    public func mask(_ value: String, strategy: MaskingStrategy) -> String? {
        var value = value
        return value.withUTF8 { mask(UnsafeRawBufferPointer($0), strategy: strategy) }.map { String(decoding: $0, as: UTF8.self) }
    }

    /// Result of masking detected spans inside a text value.
    public enum SpanResult: Sendable, Equatable {
        /// Nothing detected (or every detected span is already in its masked form).
        case unchanged
        case replaced([UInt8])
        /// A detector whose strategy is `.null` fired: the whole value becomes NULL.
        case null
    }

    /// Scans `value` with the detectors in `strategies` and replaces each detected span:
    /// redact gives `[redacted:<detector>]`, partial the partial form of the span, hash `h:` and
    /// 16 hex digits of the span; null makes the whole value NULL. Returns `.unchanged` without
    /// allocating when nothing is detected.
    ///
    /// Replacing can join what is left into something detectable again (a card's last four digits
    /// and the digits after it), so the result is rescanned until nothing changes: that makes the
    /// function idempotent by construction.
    public func maskDetected(_ value: UnsafeRawBufferPointer, strategies: [Detector: MaskingStrategy]) -> SpanResult {
        let mask = DetectorMask(strategies.keys)
        guard !mask.isEmpty else { return .unchanged }
        var current: [UInt8]?
        // Each round removes what it found; a handful of rounds is far more than real input needs.
        for _ in 0..<8 {
            let round = current.map { bytes in bytes.withUnsafeBytes { replaceDetected($0, mask: mask, strategies: strategies) } }
                ?? replaceDetected(value, mask: mask, strategies: strategies)
            switch round {
            case .unchanged: return current.map(SpanResult.replaced) ?? .unchanged
            case .null: return .null
            case .replaced(let bytes): current = bytes
            }
        }
        return current.map(SpanResult.replaced) ?? .unchanged
    }

    /// ``maskDetected(_:strategies:)-(UnsafeRawBufferPointer,_)`` over a string; `text` nil is NULL.
    public func maskDetected(_ value: String, strategies: [Detector: MaskingStrategy]) -> (text: String?, changed: Bool) {
        var copy = value
        switch copy.withUTF8({ maskDetected(UnsafeRawBufferPointer($0), strategies: strategies) }) {
        case .unchanged: return (value, false)
        case .replaced(let bytes): return (String(decoding: bytes, as: UTF8.self), true)
        case .null: return (nil, true)
        }
    }

    /// One scan-and-replace pass.
    private func replaceDetected(_ value: UnsafeRawBufferPointer, mask: DetectorMask, strategies: [Detector: MaskingStrategy]) -> SpanResult {
        let spans = Detectors.scan(value, mask: mask)
        if spans.isEmpty { return .unchanged }
        var out: [UInt8] = []
        var changed = false
        var copied = 0
        for span in spans {
            guard let strategy = strategies[span.detector] else { continue }
            let piece = UnsafeRawBufferPointer(rebasing: value[span.range])
            let replacement: [UInt8]
            switch strategy {
            case .null: return .null
            case .redact: replacement = Array("[redacted:\(span.detector.rawValue)]".utf8)
            case .partial: replacement = Self.partial(piece)
            case .hash: replacement = Self.isHashToken(piece) ? Array(piece) : hash(piece)
            }
            // An already masked span (a password value that is "[redacted:secret]") stays as it is.
            if replacement.elementsEqual(piece) { continue }
            if !changed {
                out.reserveCapacity(value.count + 16)
                changed = true
            }
            out.append(contentsOf: value[copied..<span.range.lowerBound])
            out.append(contentsOf: replacement)
            copied = span.range.upperBound
        }
        guard changed else { return .unchanged }
        out.append(contentsOf: value[copied..<value.count])
        return .replaced(out)
    }

    static let redacted: [UInt8] = Array("[redacted]".utf8)

    /// The partial form: every "maskable" character (an ASCII letter or digit, a `*`, or a
    /// non-ASCII scalar) becomes `*` except the last four maskable ones, of which ASCII letters
    /// and digits stay; other characters (spaces, dashes, `@`, `.`) stay. With fewer than five
    /// maskable characters everything maskable becomes `*`, so short values never show.
    ///
    /// Counting `*` as maskable is what makes this idempotent: `**** **** **** 1111` has four
    /// letters/digits but sixteen maskable characters, so it keeps its `1111`.
    static func partial(_ value: UnsafeRawBufferPointer) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: value.count) { buffer, count in
            count = partial(value, into: UnsafeMutableRawPointer(buffer.baseAddress!))
        }
    }

    /// The largest masked form of a `count`-byte value (``mask(_:strategy:into:)`` needs this room).
    public static func maskedCapacity(_ count: Int) -> Int { max(count, 18) }

    /// ``mask(_:strategy:)-(UnsafeRawBufferPointer,_)`` written into `out`, which has room for
    /// ``maskedCapacity(_:)`` bytes: the masked length, or nil for SQL NULL. Allocates nothing,
    /// for the per-row path.
    public func mask(_ value: UnsafeRawBufferPointer, strategy: MaskingStrategy, into out: UnsafeMutableRawPointer) -> Int? {
        switch strategy {
        case .redact:
            Self.redacted.withUnsafeBytes { out.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            return Self.redacted.count
        case .partial:
            return Self.partial(value, into: out)
        case .hash:
            if Self.isHashToken(value) {
                out.copyMemory(from: value.baseAddress!, byteCount: value.count)
                return value.count
            }
            hash(value, into: out)
            return 18
        case .null:
            return nil
        }
    }

    /// ``partial(_:)`` into `out` (at least `value.count` bytes): the length written.
    static func partial(_ value: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) -> Int {
        func isMaskable(_ c: UInt8) -> Bool { c >= 0x80 || c == MaskByte.star || MaskByte.isAlnum(c) }
        let n = value.count
        // A non-ASCII scalar is one lead byte and its continuation bytes; it becomes a single '*'.
        func next(_ i: Int) -> Int {
            var j = i + 1
            if value[i] >= 0x80 { while j < n, value[j] & 0xC0 == 0x80 { j += 1 } }
            return j
        }
        var count = 0
        var i = 0
        while i < n {
            if isMaskable(value[i]) { count += 1 }
            i = next(i)
        }
        let keepFrom = count >= 5 ? count - 4 : Int.max
        var written = 0
        var k = 0
        i = 0
        while i < n {
            let c = value[i]
            if isMaskable(c) {
                out.storeBytes(of: k >= keepFrom && MaskByte.isAlnum(c) ? c : MaskByte.star, toByteOffset: written, as: UInt8.self)
                k += 1
            } else {
                out.storeBytes(of: c, toByteOffset: written, as: UInt8.self)
            }
            written += 1
            i = next(i)
        }
        return written
    }

    /// Whether `value` is exactly `h:` and 16 lowercase hex digits (a hash output).
    static func isHashToken(_ value: UnsafeRawBufferPointer) -> Bool {
        guard value.count == 18, value[0] == 0x68, value[1] == 0x3A else { return false }
        for k in 2..<18 where !(MaskByte.isDigit(value[k]) || (0x61...0x66).contains(value[k])) { return false }
        return true
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// The `h:` token of `value` into `out` (18 bytes).
    func hash(_ value: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { code in
            keyed.mac(value, into: code.baseAddress!)
            out.storeBytes(of: 0x68, toByteOffset: 0, as: UInt8.self)
            out.storeBytes(of: 0x3A, toByteOffset: 1, as: UInt8.self)
            for index in 0..<8 {
                out.storeBytes(of: Self.hexDigits[Int(code[index] >> 4)], toByteOffset: 2 + 2 * index, as: UInt8.self)
                out.storeBytes(of: Self.hexDigits[Int(code[index] & 0x0F)], toByteOffset: 3 + 2 * index, as: UInt8.self)
            }
        }
    }

    func hash(_ value: UnsafeRawBufferPointer) -> [UInt8] {
        // 64 bits: collisions between distinct values of one column are negligible, and the
        // token stays short enough to read in a result grid.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { code in
            keyed.mac(value, into: code.baseAddress!)
            return [UInt8](unsafeUninitializedCapacity: 18) { out, count in
                out[0] = 0x68
                out[1] = 0x3A
                for index in 0..<8 {
                    out[2 + 2 * index] = Self.hexDigits[Int(code[index] >> 4)]
                    out[3 + 2 * index] = Self.hexDigits[Int(code[index] & 0x0F)]
                }
                count = 18
            }
        }
    }
}
