import Crypto
import Foundation
import Testing

@testable import CustosCore

/// SplitMix64: a tiny seeded generator, so every property run sees the same inputs.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { self.state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Generators of personal data, secrets and noise for the masking properties.
enum MaskingSamples {
    static let letters = Array("abcdefghijklmnopqrstuvwxyz")
    /// Text around a card: no digits, '+', '@', '=' or ':' so nothing else can claim the card.
    static let surroundings = Array("abcdefghijklmnopqrstuvwxyz ,;!?()")
    static let boundaries = Array(" ,;!?()")
    static let noiseCharacters = Array("abcXYZ0123456789 @+-.()*:=;_/#'\"éß日🙂") + ["\n"]

    static func pick<T>(_ values: [T], _ g: inout SplitMix64) -> T { values[Int.random(in: 0..<values.count, using: &g)] }

    static func text(_ alphabet: [Character], _ length: ClosedRange<Int>, _ g: inout SplitMix64) -> String {
        String((0..<Int.random(in: length, using: &g)).map { _ in pick(alphabet, &g) })
    }

    static func digits(_ count: Int, _ g: inout SplitMix64) -> [Int] { (0..<count).map { _ in Int.random(in: 0...9, using: &g) } }

    /// The digit that completes `body` to a Luhn-valid number.
    static func luhnCheckDigit(_ body: [Int]) -> Int {
        var sum = 0
        for (index, digit) in body.reversed().enumerated() {
            let doubled = index % 2 == 0 ? digit * 2 : digit
            sum += doubled > 9 ? doubled - 9 : doubled
        }
        return (10 - sum % 10) % 10
    }

    /// A Luhn-valid card number of `length` digits starting 2–6 (the detector's industries).
    static func cardDigits(_ length: Int, _ g: inout SplitMix64) -> [Int] {
        let body = [Int.random(in: 2...6, using: &g)] + digits(length - 2, &g)
        return body + [luhnCheckDigit(body)]
    }

    /// Digits as plain text, in groups of four, or in random groups, split by ' ' or '-'.
    static func format(_ digits: [Int], style: Int, _ g: inout SplitMix64) -> String {
        let text = digits.map(String.init).joined()
        switch style {
        case 0: return text
        case 1, 2:
            var groups: [String] = []
            var rest = Substring(text)
            while !rest.isEmpty {
                groups.append(String(rest.prefix(4)))
                rest = rest.dropFirst(4)
            }
            return groups.joined(separator: style == 1 ? " " : "-")
        default:
            var out = ""
            for (index, digit) in digits.enumerated() {
                if index > 0, Int.random(in: 0..<4, using: &g) == 0 { out += pick([" ", "-"], &g) }
                out += String(digit)
            }
            return out
        }
    }

    static func iban(_ g: inout SplitMix64) -> String {
        let bban = digits(18, &g).map(String.init).joined()
        // Check digits: 98 - (BBAN + "DE00" as digits, D=13 E=14) mod 97.
        var remainder = 0
        for c in (bban + "131400") { remainder = (remainder * 10 + Int(String(c))!) % 97 }
        let check = String(format: "%02d", 98 - remainder)
        let plain = "DE" + check + bban
        return Bool.random(using: &g) ? plain : grouped(plain)
    }

    static func grouped(_ text: String) -> String {
        var groups: [String] = []
        var rest = Substring(text)
        while !rest.isEmpty {
            groups.append(String(rest.prefix(4)))
            rest = rest.dropFirst(4)
        }
        return groups.joined(separator: " ")
    }

    static func base64url(_ count: Int, _ g: inout SplitMix64) -> String {
        text(Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), count...count, &g)
    }

    /// One random item of personal data or a secret.
    static func pii(_ g: inout SplitMix64) -> String {
        switch Int.random(in: 0..<11, using: &g) {
        case 0: return text(letters, 1...8, &g) + "@" + text(letters, 1...8, &g) + ".com"
        case 1: return format(cardDigits(Int.random(in: 13...19, using: &g), &g), style: Int.random(in: 0...3, using: &g), &g)
        case 2: return String(format: "%03d-%02d-%04d", Int.random(in: 1...665, using: &g), Int.random(in: 1...99, using: &g), Int.random(in: 1...9999, using: &g))
        case 3: return "+44 20 " + digits(4, &g).map(String.init).joined() + " " + digits(4, &g).map(String.init).joined()
        case 4: return "(555) 010-" + digits(4, &g).map(String.init).joined()
        case 5: return iban(&g)
        case 6: return "AKIA" + text(Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"), 16...16, &g)
        case 7: return "eyJ" + base64url(20, &g) + "." + base64url(30, &g) + "." + base64url(43, &g)
        case 8: return "Bearer " + base64url(24, &g)
        case 9: return "-----BEGIN RSA PRIVATE KEY-----\n" + base64url(40, &g) + (Bool.random(using: &g) ? "\n-----END RSA PRIVATE KEY-----" : "")
        default:
            let value = text(letters + ["1", "2", "!", " ", "'", "\\"], 1...12, &g)
            return pick(["password=", "Password: '", #"{"pwd": ""#], &g) + value + pick(["", "'", "\""], &g)
        }
    }

    /// Noise and personal data mixed, separated by spaces half of the time.
    static func mixed(_ g: inout SplitMix64) -> String {
        var out = ""
        for _ in 0..<Int.random(in: 1...6, using: &g) {
            out += Bool.random(using: &g) ? pii(&g) : text(noiseCharacters, 0...12, &g)
            if Bool.random(using: &g) { out += " " }
        }
        return out
    }
}

@Suite("Masking properties")
struct MaskingTests {
    static let masker = Masker(hashKey: SymmetricKey(data: Array("custos-test-key-0123456789abcdef".utf8)))
    static let allDetectors = Set(Detector.allCases)

    @Test("valid card numbers in any surrounding text are detected as cards and masked away")
    func cardsDetected() {
        var g = SplitMix64(seed: 1)
        for _ in 0..<3000 {
            let digits = MaskingSamples.cardDigits(Int.random(in: 13...19, using: &g), &g)
            let card = MaskingSamples.format(digits, style: Int.random(in: 0...3, using: &g), &g)
            let prefix = MaskingSamples.text(MaskingSamples.surroundings, 0...20, &g) + String(MaskingSamples.pick(MaskingSamples.boundaries, &g))
            let suffix = String(MaskingSamples.pick(MaskingSamples.boundaries, &g)) + MaskingSamples.text(MaskingSamples.surroundings, 0...20, &g)
            let text = prefix + card + suffix
            let range = prefix.utf8.count..<(prefix.utf8.count + card.utf8.count)
            let spans = Detectors.scan(text, enabled: Self.allDetectors)
            #expect(spans.contains(DetectedSpan(range: range, detector: .card)), "\(text)")
            let digitString = digits.map(String.init).joined()
            for strategy in [MaskingStrategy.redact, .partial, .hash] {
                let masked = Self.masker.maskDetected(text, strategies: [.card: strategy])
                let output = masked.text ?? ""
                #expect(masked.changed && !output.contains(card), "\(text) -> \(output)")
                #expect(!output.filter(\.isNumber).contains(digitString.suffix(13)), "\(text) -> \(output)")
            }
            #expect(Self.masker.maskDetected(text, strategies: [.card: .null]).text == nil)
        }
    }

    @Test("Luhn-invalid digit runs of 13-19 digits are not cards")
    func luhnInvalidNotCards() {
        var g = SplitMix64(seed: 2)
        for _ in 0..<3000 {
            let length = Int.random(in: 13...19, using: &g)
            var digits = MaskingSamples.digits(length, &g)
            digits[length - 1] = (MaskingSamples.luhnCheckDigit(Array(digits.dropLast())) + Int.random(in: 1...9, using: &g)) % 10
            // Groups of four only up to 16 digits: longer grouped runs contain whole-group windows
            // of 13+ digits, which are checked as cards on their own.
            let style = length <= 16 ? Int.random(in: 0...2, using: &g) : 0
            let run = MaskingSamples.format(digits, style: style, &g)
            let text = MaskingSamples.text(MaskingSamples.surroundings, 0...10, &g) + " " + run + " " + MaskingSamples.text(MaskingSamples.surroundings, 0...10, &g)
            #expect(!Detectors.luhnValid(Array(run.utf8)))
            #expect(!Detectors.scan(text, enabled: Self.allDetectors).contains { $0.detector == .card }, "\(text)")
        }
    }

    @Test("masking is idempotent for every strategy, whole values and detected spans")
    func idempotent() {
        var g = SplitMix64(seed: 3)
        let mixedStrategies: [Detector: MaskingStrategy] = [.email: .partial, .card: .partial, .ssn: .redact, .phone: .hash, .iban: .partial, .secret: .redact]
        for _ in 0..<2000 {
            let value = MaskingSamples.mixed(&g)
            for strategy in MaskingStrategy.allCases {
                let once = Self.masker.mask(value, strategy: strategy)
                #expect(once.flatMap { Self.masker.mask($0, strategy: strategy) } == once, "\(strategy) \(value)")
                let strategies = Dictionary(uniqueKeysWithValues: Detector.allCases.map { ($0, strategy) })
                for map in [strategies, mixedStrategies] {
                    guard let masked = Self.masker.maskDetected(value, strategies: map).text else { continue }
                    let again = Self.masker.maskDetected(masked, strategies: map)
                    #expect(again.text == masked && !again.changed, "\(value) -> \(masked) -> \(again.text ?? "NULL")")
                }
            }
        }
    }

    @Test("partial keeps exactly the last four letters/digits and stars the others")
    func partialShape() {
        var g = SplitMix64(seed: 4)
        let alphabet = Array("abcXYZ0123456789 -.@_/:")
        for _ in 0..<3000 {
            let value = MaskingSamples.text(alphabet, 0...30, &g)
            let masked = Array(Self.masker.mask(value, strategy: .partial)!)
            let original = Array(value)
            #expect(masked.count == original.count)
            let alnum = original.indices.filter { original[$0].isLetter || original[$0].isNumber }
            let kept = alnum.count >= 5 ? Set(alnum.suffix(4)) : []
            for index in original.indices {
                let expected: Character = alnum.contains(index) && !kept.contains(index) ? "*" : original[index]
                #expect(masked[index] == expected, "\(value) -> \(String(masked))")
            }
        }
    }

    @Test("hash is deterministic, keyed and differs between values")
    func hashProperties() {
        var g = SplitMix64(seed: 5)
        let other = Masker(hashKey: SymmetricKey(data: Array("another-key-0123456789abcdefghij".utf8)))
        var seen: [String: String] = [:]
        for _ in 0..<3000 {
            let value = MaskingSamples.text(MaskingSamples.noiseCharacters, 1...20, &g)
            let hashed = Self.masker.mask(value, strategy: .hash)!
            #expect(hashed == Self.masker.mask(value, strategy: .hash))
            #expect(hashed.hasPrefix("h:") && hashed.count == 18 && hashed.dropFirst(2).allSatisfy { $0.isHexDigit && !$0.isUppercase })
            #expect(other.mask(value, strategy: .hash) != hashed)
            if let previous = seen[hashed] { #expect(previous == value) }
            seen[hashed] = value
        }
        #expect(Self.masker.mask("h:0123456789abcdef", strategy: .hash) == "h:0123456789abcdef")
    }

    @Test("the strategies' exact outputs")
    func outputs() {
        let m = Self.masker
        #expect(m.mask("4111 1111 1111 1111", strategy: .partial) == "**** **** **** 1111")
        #expect(m.mask("123-45-6789", strategy: .partial) == "***-**-6789")
        #expect(m.mask("bob@example.com", strategy: .partial) == "***@******e.com")
        #expect(m.mask("abcd", strategy: .partial) == "****")
        #expect(m.mask("José Müller", strategy: .partial) == "**** **ller")
        #expect(m.mask("**** **** **** 1111", strategy: .partial) == "**** **** **** 1111")
        #expect(m.mask("anything", strategy: .redact) == "[redacted]")
        #expect(m.mask("anything", strategy: .null) == nil)
        #expect(m.mask("", strategy: .partial) == "")

        #expect(m.maskDetected("contact bob@example.com now", strategies: [.email: .redact]) == ("contact [redacted:email] now", true))
        #expect(m.maskDetected("contact bob@example.com now", strategies: [.email: .partial]) == ("contact ***@******e.com now", true))
        #expect(m.maskDetected("host=x password=s3cret user=y", strategies: [.secret: .partial]) == ("host=x password=**cret user=y", true))
        #expect(m.maskDetected("host=x password=s3cret user=y", strategies: [.secret: .redact]) == ("host=x password=[redacted:secret] user=y", true))
        let hashed = m.maskDetected("ssn 078-05-1120", strategies: [.ssn: .hash])
        #expect(hashed.text == "ssn " + m.mask("078-05-1120", strategy: .hash)!)
        #expect(m.maskDetected("ssn 078-05-1120", strategies: [.ssn: .null]) == (nil, true))
        #expect(m.maskDetected("hello world 12345", strategies: [.email: .redact, .card: .redact]) == ("hello world 12345", false))
        // Only the configured detectors run.
        #expect(m.maskDetected("ssn 078-05-1120", strategies: [.email: .redact]) == ("ssn 078-05-1120", false))
        var bytes = Array("no personal data".utf8)
        #expect(bytes.withUnsafeMutableBytes { m.maskDetected(UnsafeRawBufferPointer($0), strategies: [.card: .redact]) } == .unchanged)
    }
}
