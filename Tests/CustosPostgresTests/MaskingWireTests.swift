import Crypto
import CustosCore
import NIOCore
import Testing

@testable import CustosPostgres

@Suite("masking on the wire")
struct MaskingWireTests {
    static let masker = Masker(hashKey: SymmetricKey(data: Array(repeating: UInt8(7), count: 32)))
    static let profile = MaskingProfile(
        rule: "agents", columns: ["customers.email": .hash, "customers.ssn": .redact, "customers.created_at": .partial], columnNames: [],
        detectors: [.email: .redact, .card: .partial])
    static let customers = Catalog.Table(oid: 500, schema: "public", name: "customers", columns: [(1, "id", 23), (2, "email", 25), (3, "ssn", 25), (4, "created_at", 1184)])

    static func column(_ name: String, table: UInt32 = 500, attribute: Int16, type: UInt32, format: Int16 = 0) -> BackendMessage.Column {
        BackendMessage.Column(name: name, tableOID: table, attribute: attribute, typeOID: type, typeSize: -1, typeModifier: -1, format: format)
    }

    static func dataRow(_ values: [[UInt8]?]) -> PostgresFrame {
        var buffer = ByteBuffer()
        BackendMessage.dataRow(values.map { $0.map { ByteBuffer(bytes: $0) } }).encode(into: &buffer)
        let body = buffer.getSlice(at: 5, length: buffer.readableBytes - 5)!
        return PostgresFrame(type: UInt8(ascii: "D"), body: body, raw: buffer)
    }

    static func values(of buffer: ByteBuffer) throws -> [String?] {
        let frame = PostgresFrame(type: UInt8(ascii: "D"), body: buffer.getSlice(at: 5, length: buffer.readableBytes - 5)!, raw: buffer)
        guard case .dataRow(let values) = try BackendMessage.decode(frame) else { throw CancellationError() }
        // The rebuilt length field must match the body, or the decoder above would have failed.
        #expect(Int(buffer.getInteger(at: 1, as: Int32.self)!) == buffer.readableBytes - 1)
        return values.map { $0.map { String(buffer: $0) } }
    }

    @Test("a plan follows the column's origin, not its name, and masks other types as NULL")
    func planByOrigin() {
        let columns = [
            Self.column("id", attribute: 1, type: 23), Self.column("e", attribute: 2, type: 25), Self.column("ssn", attribute: 3, type: 1043, format: 1),
            Self.column("created_at", attribute: 4, type: 1184), Self.column("note", table: 0, attribute: 0, type: 25),
            Self.column("n", table: 0, attribute: 0, type: 23, format: 1),
        ]
        let plan = RowPlan.make(columns, profile: Self.profile) { $0 == 500 ? Self.customers : nil }
        #expect(plan.masks)
        #expect(plan.columns.map(\.action) == [.detect, .mask(.hash), .mask(.redact), .mask(.partial), .detect, .keep])
        #expect(plan.columns.map(\.typeClass) == [.other, .text, .text, .other, .text, .other])
        let unresolved = RowPlan.make([Self.column("x", table: 999, attribute: 1, type: 25)], profile: Self.profile) { _ in nil }
        #expect(unresolved.columns[0].action == .mask(.redact), "a column whose table is unknown is redacted")
        #expect(!RowPlan.make(columns, profile: .none) { _ in nil }.masks)
    }

    @Test("DataRows are rebuilt with correct lengths; unmasked values are untouched; digests see the raw row")
    func rewriteRow() throws {
        let columns = [
            Self.column("id", attribute: 1, type: 23), Self.column("email", attribute: 2, type: 25), Self.column("ssn", attribute: 3, type: 25),
            Self.column("created_at", attribute: 4, type: 1184), Self.column("note", table: 0, attribute: 0, type: 25),
        ]
        let plan = RowPlan.make(columns, profile: Self.profile) { _ in Self.customers }
        let raw: [[UInt8]?] = [Array("42".utf8), Array("bob@example.com".utf8), Array("078-05-1120".utf8), Array("2025-01-01".utf8), nil]
        let capture: ResultCapture? = ResultCapture(key: ResultDigest.Keyed(key: SymmetricKey(data: Array(repeating: UInt8(1), count: 32))), sampleLimit: 1)
        let scratch = RowScratch()
        let values = ValueMasker(masker: Self.masker, detectors: Self.profile.detectors)
        var out = ByteBuffer()
        #expect(try DataRowMasking.process(Self.dataRow(raw), plan: plan, values: values, capture: capture, scratch: scratch, into: &out))
        let masked = try Self.values(of: out)
        #expect(masked[0] == "42")
        #expect(masked[1] == Self.masker.mask("bob@example.com", strategy: .hash))
        #expect(masked[1]?.hasPrefix("h:") == true)
        #expect(masked[2] == "[redacted]")
        #expect(masked[3] == nil, "a timestamp cannot carry masked text: NULL")
        #expect(masked[4] == nil)
        #expect(capture?.sample == [["42", masked[1], "[redacted]", nil, nil]])

        // The digest is over the raw row in its canonical encoding.
        var expected = ResultDigest(key: SymmetricKey(data: Array(repeating: UInt8(1), count: 32)))
        var encoding: [UInt8] = [0, 5]
        for value in raw {
            encoding += [0, 0]
            if let value {
                encoding += withUnsafeBytes(of: UInt32(value.count).bigEndian, Array.init) + value
            } else {
                encoding += [0xff, 0xff, 0xff, 0xff]
            }
        }
        expected.add(row: encoding)
        #expect(capture?.digest.orderedHex == expected.orderedHex)

        let plain = RowPlan.make(columns, profile: .none) { _ in nil }
        var untouched = ByteBuffer()
        #expect(try !DataRowMasking.process(Self.dataRow(raw), plan: plain, values: values, capture: capture, scratch: scratch, into: &untouched))
        #expect(untouched.readableBytes == 0)
    }

    @Test("binary jsonb keeps its version byte; json becomes a JSON string")
    func jsonValues() {
        let values = ValueMasker(masker: Self.masker, detectors: [.email: .redact])
        let jsonb = RowPlan.Column(typeOID: 3802, format: 1, typeClass: .jsonb, action: .detect)
        let raw: [UInt8] = [1] + Array(#"{"to": "bob@example.com"}"#.utf8)
        guard case .bytes(let masked) = raw.withUnsafeBytes({ values.mask($0, column: jsonb) }) else {
            Issue.record("expected a masked value")
            return
        }
        #expect(masked.first == 1)
        #expect(String(decoding: masked.dropFirst(), as: UTF8.self) == #""{\"to\": \"[redacted:email]\"}""#)
        let json = RowPlan.Column(typeOID: 114, format: 0, typeClass: .json, action: .mask(.redact))
        guard case .bytes(let redacted) = Array("[1,2]".utf8).withUnsafeBytes({ values.mask($0, column: json) }) else {
            Issue.record("expected a masked value")
            return
        }
        #expect(String(decoding: redacted, as: UTF8.self) == #""[redacted]""#)
    }

    @Test("COPY text rows keep escapes, delimiters and NULLs; CSV rows keep quoting and the header")
    func copyRows() {
        let text = CopyInfo(isFrom: false, table: "customers")
        let values = ValueMasker(masker: Self.masker, detectors: [:])
        func column(_ type: UInt32, _ action: RowPlan.Action) -> RowPlan.Column {
            RowPlan.Column(typeOID: type, format: 0, typeClass: RowPlan.typeClass(type, format: 0), action: action)
        }
        var plan = CopyPlan(
            info: text, columns: [column(23, .keep), column(25, .mask(.hash)), column(25, .mask(.redact)), column(25, .keep), column(1184, .mask(.redact))],
            profile: Self.profile)
        let row = Array("7\tbob@example.com\ta\\tb\t\\N\t2025-01-01\n".utf8)
        let out = plan.mask(row, values: values).map { String(decoding: $0, as: UTF8.self) }
        #expect(out == "7\t\(Self.masker.mask("bob@example.com", strategy: .hash)!)\t[redacted]\t\\N\t\\N\n", "a masked timestamp is NULL")
        #expect(TextRow.split(Array("a\\\\b\\tc\\x41\\101\tz".utf8), delimiter: 9) == [Array("a\\b\tcAA".utf8), Array("z".utf8)])

        let csv = CopyInfo(isFrom: false, table: nil, query: "SELECT", format: .csv, header: true)
        var csvPlan = CopyPlan(info: csv, columns: [column(25, .mask(.redact)), column(25, .keep)], profile: Self.profile)
        #expect(csvPlan.mask(Array("email,note\n".utf8), values: values) == nil, "the header passes")
        let masked = csvPlan.mask(Array("\"a,b@example.com\",\"say \"\"hi\"\"\"\n".utf8), values: values)
        #expect(masked.map { String(decoding: $0, as: UTF8.self) } == "[redacted],\"say \"\"hi\"\"\"\n")
        #expect(CSVRow.split(Array(",\"\",x".utf8), info: csv) == [nil, [], Array("x".utf8)])

        let unknown = CopyPlan(info: text, columns: nil, profile: Self.profile)
        #expect(unknown.redactAll, "columns unknown while column rules apply: every field is redacted")
    }

    @Test("constraint errors lose the values they echo")
    func errorEchoes() {
        #expect(ErrorMasking.redactEcho("Key (email)=(bob@example.com) already exists.") == "Key (email)=([redacted]) already exists.")
        #expect(ErrorMasking.redactEcho("Key (a, b)=(1, x)) is not present in table \"t\".") == "Key (a, b)=([redacted]) is not present in table \"t\".")
        #expect(ErrorMasking.redactEcho("Failing row contains (1, bob, null).") == "Failing row contains ([redacted]).")
        #expect(ErrorMasking.redactEcho("nothing here") == nil)
        let error = ErrorFields([(UInt8(ascii: "S"), "ERROR"), (UInt8(ascii: "C"), "23505"), (UInt8(ascii: "M"), "duplicate"), (UInt8(ascii: "D"), "Key (email)=(bob@example.com) already exists.")])
        let masked = ErrorMasking.mask(error, profile: Self.profile, masker: Self.masker)
        #expect(masked?["D"] == "Key (email)=([redacted]) already exists.")
        #expect(masked?.sqlstate == "23505")
        #expect(ErrorMasking.mask(error, profile: .none, masker: Self.masker) == nil)
    }
}
