import Crypto

/// Keyed digests of a raw result, as the backend sent it (docs/evidence.md, "Result digests"):
/// proof of what was returned that holds no data. `ordered` covers the rows in the order they came;
/// `multiset` keys the sum of per-row SHA-256 digests, so a result returned in another order
/// digests the same. A row costs one SHA-256 of its own and an update of the running HMAC.
///
/// Each row is given in its canonical encoding: the column count (uint16), then per column its
/// format code (int16), length (int32, -1 for NULL) and bytes, all big-endian.
public struct ResultDigest: Sendable {
    /// The digest key, prepared once per gateway.
    public typealias Keyed = KeyedHash

    static let orderedLabel = Array("custos.result.ordered.v1\n".utf8)
    static let multisetLabel = Array("custos.result.multiset.v1\n".utf8)

    private let keyed: Keyed
    private var ordered: KeyedHash.Running
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
    }

    /// Adds one row in its canonical encoding.
    public mutating func add(row: UnsafeRawBufferPointer) {
        rows += 1
        ordered.update(row)
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { buffer in
            KeyedHash.sha256(row, into: buffer.baseAddress!)
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

    /// The multiset digest (hex): HMAC of the per-row SHA-256 digests summed modulo 2^256.
    public var multisetHex: String {
        var hasher = keyed.start()
        hasher.update(Self.multisetLabel)
        var total: [UInt8] = []
        for limb in [sum.0, sum.1, sum.2, sum.3] {
            for shift in stride(from: 56, through: 0, by: -8) { total.append(UInt8(truncatingIfNeeded: limb >> UInt64(shift))) }
        }
        hasher.update(total)
        return keyed.finishHex(hasher)
    }
}
