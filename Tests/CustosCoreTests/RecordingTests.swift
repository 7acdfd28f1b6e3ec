import Foundation
import Testing

@testable import CustosCore

@Suite("Canonical events")
struct RecordingTests {
    @Test("canonical JSON sorts keys by bytes, has no whitespace and escapes minimally")
    func canonicalJSON() {
        let value: CanonicalJSON = ["b": 1, "a": ["z": nil, "é": true, "A": "x\"y\\z\n\u{1}"], "list": [1, "two", false]]
        #expect(value.text == #"{"a":{"A":"x\"y\\z\n\u0001","z":null,"é":true},"b":1,"list":[1,"two",false]}"#)
    }

    @Test("string escapes are the same wherever they fall in a string, and keys sort by bytes")
    func canonicalStrings() {
        for text in ["", "\"", "plain", "\"lead", "trail\n", "mid\tdle\u{7}x", "\\\\", "é\u{1F}ü"] {
            var expected = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": expected += "\\\""
                case "\\": expected += "\\\\"
                case "\n": expected += "\\n"
                case "\t": expected += "\\t"
                case _ where scalar.value < 0x20: expected += String(format: "\\u%04x", scalar.value)
                default: expected.unicodeScalars.append(scalar)
                }
            }
            expected += "\""
            #expect(CanonicalJSON.string(text).text == expected)
        }
        // "Z" < "a" < "ab" < "é" by UTF-8 bytes.
        let keys: CanonicalJSON = ["é": 1, "ab": 2, "a": 3, "Z": 4]
        #expect(keys.text == #"{"Z":4,"a":3,"ab":2,"é":1}"#)
    }

    @Test("timestamps match Foundation's RFC 3339 rendering")
    func timestampsMatchFoundation() {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        for seconds in [0, 951_782_400, 1_796_013_267, 4_102_444_799] as [Int] {
            for micros in [0, 1, 999_999, 123_456] {
                let date = Date(timeIntervalSince1970: Double(seconds) + Double(micros) / 1_000_000 + 0.0000001)
                let text = Timestamp.format(date)
                #expect(text == formatter.string(from: Date(timeIntervalSince1970: Double(seconds))).dropLast() + "." + String(format: "%06d", micros) + "Z")
            }
        }
    }

    @Test("timestamps have exactly six fractional digits in UTC")
    func timestamps() {
        #expect(Timestamp.format(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000000Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: 1_796_013_267.123456)) == "2026-11-30T04:34:27.123456Z")
        #expect(Timestamp.parse("2026-11-30T04:34:27.123456Z") != nil)
        #expect(Timestamp.parse("2026-11-30T04:34:27Z") != nil)
        #expect(Timestamp.parse("yesterday") == nil)
    }

    @Test("event hashes follow docs/evidence.md (vector computed independently with Python hashlib)")
    func eventHashVector() {
        let draft = EventDraft(kind: .statement, sessionID: "s-1", at: Date(timeIntervalSince1970: 0), payload: ["text": "SELECT 1"])
        let event = EventChain.seal(draft, writerID: "gw-test", seq: 1, prevHash: EventChain.genesis)
        #expect(event.payload == #"{"text":"SELECT 1"}"#)
        #expect(event.payloadHash == "6d164938867f94a8b35de21e468777e79c96064f8bf0930720ca9f5990dd5e1b")
        #expect(event.hash == Self.pythonVectorHash)
        #expect(EventChain.isSelfConsistent(event))
        var tampered = event
        tampered.payload = #"{"text":"SELECT 2"}"#
        #expect(!EventChain.isSelfConsistent(tampered))
    }

    /// python3 -c 'import hashlib; p=hashlib.sha256(b"{\"text\":\"SELECT 1\"}").hexdigest();
    ///   print(hashlib.sha256(("custos.event.v1\ngw-test\n1\n1970-01-01T00:00:00.000000Z\ns-1\nstatement\n"+p+"\n"+"0"*64).encode()).hexdigest())'
    static let pythonVectorHash = "0e26e6614114d7f158647c0581ce297b4866f5bd2db0d50255d022edb465e9b6"
}
