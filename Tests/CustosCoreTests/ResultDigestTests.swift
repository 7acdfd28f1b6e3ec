import Crypto
import Testing

@testable import CustosCore

@Suite("result digests and record masking")
struct ResultDigestTests {
    static let key = SymmetricKey(data: Array("0123456789abcdef0123456789abcdef".utf8))

    @Test("ordered is HMAC-SHA256 over the labelled rows; multiset sums per-row HMACs and ignores order")
    func digests() {
        let rows: [[UInt8]] = [[0, 1, 0, 0, 0, 0, 0, 1, 65], [0, 1, 0, 0, 0, 0, 0, 1, 66], [0, 1, 0, 0, 255, 255, 255, 255]]
        var forward = ResultDigest(key: Self.key)
        var backward = ResultDigest(key: Self.key)
        rows.forEach { forward.add(row: $0) }
        rows.reversed().forEach { backward.add(row: $0) }

        var reference = HMAC<SHA256>(key: Self.key)
        reference.update(data: Array("custos.result.ordered.v1\n".utf8))
        rows.forEach { reference.update(data: $0) }
        #expect(forward.orderedHex == EventChain.hex(reference.finalize()))
        #expect(forward.orderedHex != backward.orderedHex)
        #expect(forward.multisetHex == backward.multisetHex)
        #expect(forward.multisetHex.count == 64)

        // The multiset by the documented arithmetic: the rows' HMACs read as big-endian 256-bit
        // integers, summed modulo 2^256.
        var sum = [UInt8](repeating: 0, count: 32)
        for row in rows {
            let digest = Array(HMAC<SHA256>.authenticationCode(for: Array("custos.result.row.v1\n".utf8) + row, using: Self.key))
            var carry = 0
            for index in (0..<32).reversed() {
                let total = Int(sum[index]) + Int(digest[index]) + carry
                sum[index] = UInt8(total & 0xff)
                carry = total >> 8
            }
        }
        #expect(forward.multisetHex == EventChain.hex(sum))

        var duplicated = ResultDigest(key: Self.key)
        (rows + [rows[0]]).forEach { duplicated.add(row: $0) }
        #expect(duplicated.multisetHex != forward.multisetHex, "a duplicated row changes the multiset")
    }

    @Test("recorded statements: literals on masked columns take the column's strategy, passwords and secrets never stay")
    func recordMasking() {
        let masker = Masker(hashKey: Self.key)
        let profile = MaskingProfile(rule: "r", columns: ["customers.ssn": .redact, "customers.email": .hash], columnNames: [], detectors: [.card: .redact])
        let recording = RecordMasking(masker: masker)
        let text = "SELECT * FROM customers WHERE ssn = '078-05-1120' AND email = $1 AND note = 'card 4111 1111 1111 1111'"
        let start = text.utf8.count - text.drop { $0 != "'" }.utf8.count
        let uses = [
            LiteralUse(range: start..<start + 13, role: .column(table: "customers", column: "ssn")),
            LiteralUse(parameter: 1, role: .column(table: "customers", column: "email")),
        ]
        let masked = recording.mask(text: text, parameters: ["bob@example.com"], uses: uses, profile: profile)
        #expect(masked.text == "SELECT * FROM customers WHERE ssn = '[redacted]' AND email = $1 AND note = 'card [redacted:card]'")
        #expect(masked.parameters == [masker.mask("bob@example.com", strategy: .hash)])
        #expect(masked.masked)

        let role = "ALTER ROLE app PASSWORD 'hunter2-secret'"
        let literal = role.utf8.count - 16
        let password = recording.mask(text: role, parameters: [], uses: [LiteralUse(range: literal..<role.utf8.count, role: .password)], profile: .none)
        #expect(password.text == "ALTER ROLE app PASSWORD '[redacted]'")

        let secret = recording.mask(text: "SELECT 'AKIAIOSFODNN7EXAMPLE'", parameters: [], uses: [], profile: .none)
        #expect(!secret.text.contains("AKIAIOSFODNN7EXAMPLE"), "secrets are masked in the record for every identity")
        let plain = recording.mask(text: "SELECT 1", parameters: [], uses: [], profile: profile)
        #expect(plain.text == "SELECT 1" && !plain.masked)

        // A statement too complex to follow: its literals are redacted where any column is masked.
        let complex = "SELECT 1 FROM t WHERE x = 'a-value' AND y = $1"
        let unknown = [LiteralUse(range: 26..<35, role: .unknown), LiteralUse(parameter: 1, role: .unknown)]
        let closed = recording.mask(text: complex, parameters: ["p-value"], uses: unknown, profile: profile)
        #expect(closed.text == "SELECT 1 FROM t WHERE x = '[redacted]' AND y = $1")
        #expect(closed.parameters == ["[redacted]"])
        let open = recording.mask(text: complex, parameters: ["p-value"], uses: unknown, profile: .none)
        #expect(open.text == complex && open.parameters == ["p-value"], "no masking rule for this identity: nothing to hide")
    }

    @Test("masking into a buffer gives exactly what masking into an array gives, for every strategy")
    func maskInto() {
        let masker = Masker(hashKey: Self.key)
        let values = ["", "a", "abcd", "4111 1111 1111 1111", "bob@example.com", "José Müller", "h:0123456789abcdef", "[redacted]", String(repeating: "x9", count: 300)]
        for value in values {
            for strategy in MaskingStrategy.allCases {
                let expected = masker.mask(value, strategy: strategy)
                var copy = value
                let got: String? = copy.withUTF8 { raw in
                    let bytes = UnsafeRawBufferPointer(raw)
                    let out = UnsafeMutableRawPointer.allocate(byteCount: Masker.maskedCapacity(bytes.count), alignment: 1)
                    defer { out.deallocate() }
                    return masker.mask(bytes, strategy: strategy, into: out).map { String(decoding: UnsafeRawBufferPointer(start: out, count: $0), as: UTF8.self) }
                }
                #expect(got == expected, "\(strategy) of \(value)")
            }
        }
    }
}
