import Crypto
import Foundation
import Synchronization
import Testing

@testable import CustosCore

/// A JWKS that tests can change, counting fetches (no network: the end-to-end suite uses a real issuer).
final class StaticJWKS: JWKSSource {
    let document = Mutex<[UInt8]>(Array(#"{"keys":[]}"#.utf8))
    let fetches = Atomic<Int>(0)

    func set(_ keys: [[String: Any]]) {
        let bytes = Array(try! JSONSerialization.data(withJSONObject: ["keys": keys]))
        document.withLock { $0 = bytes }
    }

    func fetchJWKS(for issuer: IssuerSettings) async throws -> [UInt8] {
        fetches.add(1, ordering: .relaxed)
        return document.withLock { $0 }
    }
}

/// Signs tokens with P-256 (ES256), as an issuer would.
struct TestSigner {
    let kid: String
    let key = P256.Signing.PrivateKey()

    var jwk: [String: Any] {
        let point = key.publicKey.x963Representation
        return ["kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                "x": Self.b64(point[1..<33]), "y": Self.b64(point[33..<65])]
    }

    func token(_ claims: [String: Any], header: [String: Any]? = nil) -> String {
        let head = Self.b64(try! JSONSerialization.data(withJSONObject: header ?? ["alg": "ES256", "kid": kid, "typ": "JWT"]))
        let body = Self.b64(try! JSONSerialization.data(withJSONObject: claims))
        let signature = try! key.signature(for: Data("\(head).\(body)".utf8)).rawRepresentation
        return "\(head).\(body).\(Self.b64(signature))"
    }

    static func b64<D: DataProtocol>(_ data: D) -> String {
        Data(data).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}

@Suite("Token verification")
struct TokenVerifierTests {
    static let issuer = "http://127.0.0.1:9000"
    let source = StaticJWKS()
    let signer = TestSigner(kid: "ec-1")
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    func verifier(refetch: TimeInterval = 60) -> TokenVerifier {
        let now = self.now
        return TokenVerifier(
            issuers: [IssuerSettings(issuer: Self.issuer, audiences: ["custos"], algorithms: ["ES256", "RS256"], groupsClaim: "realm.groups")],
            source: source, skew: 30, refetchInterval: refetch, now: { now })
    }

    func claims(_ changes: [String: Any] = [:]) -> [String: Any] {
        var claims: [String: Any] = [
            "iss": Self.issuer, "aud": "custos", "sub": "agent-7", "email": "a7@example.com",
            "exp": now.timeIntervalSince1970 + 600, "nbf": now.timeIntervalSince1970 - 5, "realm": ["groups": ["agents", "dba"]],
            "act": ["sub": "alice"],
        ]
        for (key, value) in changes { claims[key] = value }
        return claims
    }

    func check(_ token: String, _ expected: TokenError.Check) async {
        source.set([signer.jwk])
        await #expect(throws: TokenError(expected)) { try await verifier().verify(token) }
    }

    @Test("a valid token yields the identity, groups from a nested claim, and the delegation chain")
    func valid() async throws {
        source.set([signer.jwk])
        let identity = try await verifier().verify(signer.token(claims()))
        #expect(identity.subject == "agent-7")
        #expect(identity.email == "a7@example.com")
        #expect(identity.groups == ["agents", "dba"])
        #expect(identity.actors == ["alice"])
        #expect(identity.issuer == Self.issuer)
    }

    @Test("each failed check is named")
    func refusals() async throws {
        let t = now.timeIntervalSince1970
        await check(signer.token(claims(["exp": t - 31])), .expired)
        await check(signer.token(claims(["nbf": t + 31])), .notYetValid)
        await check(signer.token(claims(["aud": ["other", "more"]])), .audienceMismatch)
        await check(signer.token(claims(["iss": "https://evil.example"])), .issuerNotTrusted)
        await check("not-a-jwt", .malformed)
        await check("a.b.c", .malformed)
        var noSub = claims()
        noSub["sub"] = nil
        await check(signer.token(noSub), .missingClaim)
    }

    @Test("clock skew tolerates small differences")
    func skew() async throws {
        source.set([signer.jwk])
        let t = now.timeIntervalSince1970
        _ = try await verifier().verify(signer.token(claims(["exp": t - 20, "nbf": t + 20])))
    }

    @Test("alg none and HMAC are refused before any key is used")
    func forbiddenAlgorithms() async throws {
        let body = TestSigner.b64(try JSONSerialization.data(withJSONObject: claims()))
        let none = TestSigner.b64(try JSONSerialization.data(withJSONObject: ["alg": "none", "kid": "ec-1"])) + ".\(body)."
        await check(none, .algorithmNotAllowed)
        let hsHeader = TestSigner.b64(try JSONSerialization.data(withJSONObject: ["alg": "HS256", "kid": "ec-1"]))
        let mac = HMAC<SHA256>.authenticationCode(for: Data("\(hsHeader).\(body)".utf8), using: SymmetricKey(data: Data("public".utf8)))
        await check("\(hsHeader).\(body).\(TestSigner.b64(Data(mac)))", .algorithmNotAllowed)
        // An algorithm that does not fit the key's type (RS256 against an EC key).
        let rsHeader = TestSigner.b64(try JSONSerialization.data(withJSONObject: ["alg": "RS256", "kid": "ec-1"]))
        await check("\(rsHeader).\(body).AAAA", .algorithmNotAllowed)
    }

    @Test("a tampered payload or another key's signature fails the signature check")
    func signatures() async throws {
        let token = signer.token(claims())
        let parts = token.split(separator: ".")
        let forged = TestSigner.b64(try JSONSerialization.data(withJSONObject: claims(["sub": "admin"])))
        await check("\(parts[0]).\(forged).\(parts[2])", .signatureInvalid)
        let impostor = TestSigner(kid: "ec-1")  // same kid, key not in the JWKS
        await check(impostor.token(claims()), .signatureInvalid)
    }

    @Test("an unknown kid refetches the JWKS once per interval; rotation is picked up")
    func rotation() async throws {
        source.set([signer.jwk])
        let verifier = verifier(refetch: 0)
        _ = try await verifier.verify(signer.token(claims()))
        #expect(source.fetches.load(ordering: .relaxed) == 1)
        _ = try await verifier.verify(signer.token(claims()))
        #expect(source.fetches.load(ordering: .relaxed) == 1, "a known kid is served from the cache")
        let rotated = TestSigner(kid: "ec-2")
        source.set([signer.jwk, rotated.jwk])
        let identity = try await verifier.verify(rotated.token(claims()))
        #expect(identity.subject == "agent-7")
        #expect(source.fetches.load(ordering: .relaxed) == 2)
    }

    @Test("refetches are rate-limited")
    func rateLimit() async throws {
        source.set([signer.jwk])
        let verifier = verifier(refetch: 3600)
        _ = try await verifier.verify(signer.token(claims()))
        let stranger = TestSigner(kid: "ec-9")
        for _ in 0..<5 {
            await #expect(throws: TokenError(.unknownKey)) { try await verifier.verify(stranger.token(claims())) }
        }
        #expect(source.fetches.load(ordering: .relaxed) == 1)
    }

    @Test("unusable keys are skipped; the usable ones still verify")
    func unusableKeysSkipped() async throws {
        let oct: [String: Any] = ["kty": "oct", "kid": "hmac", "k": "c2VjcmV0"]
        let enc: [String: Any] = ["kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"]
        let k1: [String: Any] = ["kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA"]
        let noKid: [String: Any] = ["kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"]
        source.set([oct, enc, k1, noKid, signer.jwk])
        let identity = try await verifier().verify(signer.token(claims()))
        #expect(identity.subject == "agent-7")
        let header = TestSigner.b64(try JSONSerialization.data(withJSONObject: ["alg": "ES256", "kid": "hmac"]))
        await #expect(throws: TokenError(.unknownKey)) {
            try await verifier().verify("\(header).\(TestSigner.b64(try JSONSerialization.data(withJSONObject: claims()))).AAAA")
        }
    }

    @Test("an unreachable issuer is reported as such")
    func unreachable() async throws {
        struct Down: JWKSSource {
            func fetchJWKS(for issuer: IssuerSettings) async throws -> [UInt8] { throw URLError(.cannotConnectToHost) }
        }
        let verifier = TokenVerifier(
            issuers: [IssuerSettings(issuer: Self.issuer, audiences: ["custos"], algorithms: ["ES256"], groupsClaim: "groups")],
            source: Down(), skew: 30, refetchInterval: 0)
        await #expect(throws: TokenError(.issuerUnavailable)) { try await verifier.verify(signer.token(claims(["exp": Date().timeIntervalSince1970 + 60]))) }
    }
}
