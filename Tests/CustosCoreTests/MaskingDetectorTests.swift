import Foundation
import Testing

@testable import CustosCore

@Suite("Masking detectors")
struct MaskingDetectorTests {
    /// The detected substrings of `text` with their detectors, all detectors enabled unless given.
    func found(_ text: String, _ enabled: Set<Detector> = Set(Detector.allCases)) -> [String] {
        let bytes = Array(text.utf8)
        return Detectors.scan(text, enabled: enabled).map { "\($0.detector.rawValue):" + String(decoding: bytes[$0.range], as: UTF8.self) }
    }

    @Test("email")
    func email() {
        #expect(found("contact bob@example.com now") == ["email:bob@example.com"])
        #expect(found("<first.last+tag@mail.example.co.uk>.") == ["email:first.last+tag@mail.example.co.uk"])
        #expect(found("bob@localhost, x@y.z, a@b.c0m, @example.com") == [])
        #expect(found("***@******e.com and **.b@x.io") == [])
    }

    @Test("card")
    func card() {
        #expect(found("card 4111 1111 1111 1111 ok") == ["card:4111 1111 1111 1111"])
        #expect(found("4111-1111-1111-1111") == ["card:4111-1111-1111-1111"])
        #expect(found("amex 378282246310005.") == ["card:378282246310005"])
        #expect(found("4111 1111 1111 1111 12/25") == ["card:4111 1111 1111 1111"])
        #expect(found("4111 1111 1111 1112") == [])
        // Longer unbroken runs and 13-digit millisecond timestamps are not cards.
        #expect(found("41111111111111111111") == [])
        #expect(found("at 1700000000004") == [])
        #expect(found("**** **** **** 1111") == [])
        #expect(Detectors.luhnValid(Array("4111 1111-1111 1111".utf8)))
        #expect(!Detectors.luhnValid(Array("4111 1111 1111 1112".utf8)))
        #expect(!Detectors.luhnValid(Array("4111x1111".utf8)))
    }

    @Test("ssn")
    func ssn() {
        #expect(found("SSN 078-05-1120.") == ["ssn:078-05-1120"])
        #expect(found("078 05 1120") == ["ssn:078 05 1120"])
        for invalid in ["000-12-3456", "666-12-3456", "912-12-3456", "078-00-1120", "078-05-0000", "078051120", "1078-05-1120", "078-05-11201", "9-078-05-1120"] {
            #expect(found(invalid).allSatisfy { !$0.hasPrefix("ssn:") }, "\(invalid)")
        }
    }

    @Test("phone")
    func phone() {
        #expect(found("call +44 20 7946 0958 today") == ["phone:+44 20 7946 0958"])
        #expect(found("(555) 010-1234") == ["phone:(555) 010-1234"])
        #expect(found("555-010-1234 or 555.010.1234") == ["phone:555-010-1234", "phone:555.010.1234"])
        #expect(found("+1 (555) 010-1234") == ["phone:+1 (555) 010-1234"])
        #expect(found("+1234567 and +1234567890123456") == [])
        // Not on an SSN or a card, even with only the phone detector on.
        #expect(found("078-05-1120 4111 1111 1111 1111 4111-1111-1111-1111", [.phone]) == [])
        #expect(found("555-010-1234-5678") == [])
    }

    @Test("iban")
    func iban() {
        #expect(found("pay DE89 3704 0044 0532 0130 00 today") == ["iban:DE89 3704 0044 0532 0130 00"])
        #expect(found("DE89370400440532013000") == ["iban:DE89370400440532013000"])
        #expect(found("de89 3704 0044 0532 0130 00") == ["iban:de89 3704 0044 0532 0130 00"])
        #expect(found("GB82 WEST 1234 5698 7654 32") == ["iban:GB82 WEST 1234 5698 7654 32"])
        #expect(found("BE68 5390 0754 7034 next") == ["iban:BE68 5390 0754 7034"])
        #expect(found("DE89 3704 0044 0532 0130 01").allSatisfy { !$0.hasPrefix("iban:") })
        #expect(found("XDE89370400440532013000") == [])
        #expect(Detectors.ibanValid(Array("GB82WEST12345698765432".utf8)))
        #expect(!Detectors.ibanValid(Array("GB82WEST12345698765433".utf8)))
        #expect(!Detectors.ibanValid(Array("GB82-WEST".utf8)))
    }

    @Test("secret")
    func secret() {
        #expect(found("aws AKIAIOSFODNN7EXAMPLE here") == ["secret:AKIAIOSFODNN7EXAMPLE"])
        #expect(found("ASIAIOSFODNN7EXAMPLE") == ["secret:ASIAIOSFODNN7EXAMPLE"])
        #expect(found("AKIAIOSFODNN7EXAMPL") == [])
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        #expect(found("token " + jwt + " end") == ["secret:" + jwt])
        #expect(found("eyJhbGciOi.eyJz.abc") == [])
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END RSA PRIVATE KEY-----"
        #expect(found("key:\n" + pem + "\ntrailer") == ["secret:" + pem])
        #expect(found("x -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg") == ["secret:-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg"])
        #expect(found("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----") == [])
        #expect(found("Authorization: Bearer abcdef0123456789abcdef") == ["secret:abcdef0123456789abcdef"])
        #expect(found("Bearer short") == [])
        #expect(found("host=x password=s3cret user=y") == ["secret:s3cret"])
        #expect(found("Password: hunter2") == ["secret:hunter2"])
        #expect(found(#"{"password":"p4ss","user":"x"}"#) == ["secret:p4ss"])
        #expect(found("Server=db;Pwd=abc;") == ["secret:abc"])
        #expect(found("access_token=0123456789abcdef&x=1") == ["secret:0123456789abcdef"])
        #expect(found("token: yes, passwords are great, secret=short") == [])
        #expect(found("UPDATE users SET password = $1, token = ? WHERE password = 'it''s old'") == ["secret:it''s old"])
        #expect(found(#"{"password": "correct \"horse\" battery", "n": 1}"#) == [#"secret:correct \"horse\" battery"#])
    }

    @Test("overlaps: the earlier and longer span wins, then the more specific detector")
    func overlaps() {
        #expect(found("password=bob@example.com") == ["secret:bob@example.com"])
        // Card windows inside the IBAN's digits start later than the IBAN, which wins.
        #expect(found("DE89 3704 0044 0532 0130 00 and bob@example.com") == ["iban:DE89 3704 0044 0532 0130 00", "email:bob@example.com"])
        #expect(Detectors.scan("", enabled: Set(Detector.allCases)) == [])
        #expect(Detectors.scan("bob@example.com", enabled: []) == [])
    }

    @Test("masked outputs are not detected again")
    func maskedNotDetected() {
        let masker = Masker(hashKey: .init(size: .bits256))
        let samples = [
            "bob@example.com", "alice.smith@x.io", "4111 1111 1111 1111", "078-05-1120", "+44 20 7946 0958", "(555) 010-1234",
            "DE89 3704 0044 0532 0130 00", "AKIAIOSFODNN7EXAMPLE", "Bearer abcdef0123456789abcdef",
        ]
        for sample in samples {
            for strategy in [MaskingStrategy.redact, .partial, .hash] {
                let masked = masker.maskDetected("x " + sample + " y", strategies: Dictionary(uniqueKeysWithValues: Detector.allCases.map { ($0, strategy) }))
                #expect(masked.changed, "\(sample)")
                #expect(Detectors.scan(masked.text!, enabled: Set(Detector.allCases)) == [], "\(sample) \(strategy) -> \(masked.text!)")
            }
        }
    }
}
