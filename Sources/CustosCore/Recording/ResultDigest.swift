import Crypto

/// Keyed digests of a raw result, as the backend sent it (docs/evidence.md, "Result digests"):
/// proof of what was returned that holds no data. `ordered` covers the rows in the order they came;
/// `multiset` is the sum of per-row HMACs, so a result returned in another order digests the
/// same; keying each row (not only the sum) keeps anyone who controls the rows from crafting
/// colliding sums. A row costs one HMAC of its own and an update of the running one.
///
/// Each row is given in its canonical encoding: the column count (uint16), then per column its
/// format code (int16), length (int32, -1 for NULL) and bytes, all big-endian.
public struct ResultDigest: Sendable {
    /// The digest key, prepared once per gateway.
    public typealias Keyed = KeyedHash

    static let orderedLabel = Array("custos.result.ordered.v1\n".utf8)
    static let rowLabel = Array("custos.result.row.v1\n".utf8)

    private let keyed: Keyed
    private var ordered: KeyedHash.Running
    /// The keyed state after the row label, copied for each row.
    private var rowStart: KeyedHash.Running
    /// The multiset sum, as four 64-bit limbs, most significant first.
    private var sum: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    /// Rows digested so far.
    public private(set) var rows = 0

    public init(key: SymmetricKey) {
        self.init(keyed: Keyed(key: key))
    }

    public init(keyed: Keyed) {
        self.keyed = keyed
        ordered = keyed.start()
        ordered.update(Self.orderedLabel)
        rowStart = keyed.start()
        rowStart.update(Self.rowLabel)
    }

    /// Adds one row in its canonical encoding.
    public mutating func add(row: UnsafeRawBufferPointer) {
        rows += 1
        ordered.update(row)
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { buffer in
            var hasher = rowStart
            hasher.update(row)
            keyed.finish(hasher, into: buffer.baseAddress!)
            let bytes = UnsafeRawBufferPointer(buffer)
            func limb(_ offset: Int) -> UInt64 {
                var value: UInt64 = 0
                for index in offset..<offset + 8 { value = value << 8 | UInt64(bytes[index]) }
                return value
            }
            // 256-bit addition modulo 2^256, least significant limb first.
            var carry: UInt64 = 0
            func add(_ a: UInt64, _ b: UInt64) -> UInt64 {
                let (partial, overflow1) = a.addingReportingOverflow(b)
                let (total, overflow2) = partial.addingReportingOverflow(carry)
                carry = (overflow1 ? 1 : 0) + (overflow2 ? 1 : 0)
                return total
            }
            sum.3 = add(sum.3, limb(24))
            sum.2 = add(sum.2, limb(16))
            sum.1 = add(sum.1, limb(8))
            sum.0 = add(sum.0, limb(0))
        }
    }

    /// Adds one row in its canonical encoding.
    public mutating func add(row: [UInt8]) {
        row.withUnsafeBytes { add(row: $0) }
    }

    /// The ordered digest (hex) of the rows added so far.
    public var orderedHex: String {
        keyed.finishHex(ordered)
    }

    /// The multiset digest (hex): the per-row HMACs summed modulo 2^256.
    public var multisetHex: String {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { bytes in
            for (index, limb) in [sum.0, sum.1, sum.2, sum.3].enumerated() {
                for byte in 0..<8 { bytes[index * 8 + byte] = UInt8(truncatingIfNeeded: limb >> (56 - 8 * byte)) }
            }
            return EventChain.hex(UnsafeRawBufferPointer(bytes))
        }
    }
}
