import Foundation
import JWTKit

/// Fetches an issuer's JWKS document (discovery included). Implemented over HTTP by the server;
/// the core only decides when to ask.
public protocol JWKSSource: Sendable {
    /// Returns the issuer's current JWKS as JSON bytes.
    func fetchJWKS(for issuer: IssuerSettings) async throws -> [UInt8]
}

/// Validates OIDC JWTs against the trusted issuers: header, key, signature, then claims.
///
/// jwt-kit verifies signatures; everything around it (key selection by `kid`, caching, refetch on an
/// unknown `kid` with a rate limit, skipping unusable keys, clock skew, audience) is done here,
/// because jwt-kit silently falls back to its default key for an unknown `kid`.
public actor TokenVerifier {
    private let issuers: [String: IssuerSettings]
    private let source: any JWKSSource
    private let skew: TimeInterval
    private let refetchInterval: TimeInterval
    private let now: @Sendable () -> Date
    private var keySets: [String: KeySet] = [:]

    private struct KeySet {
        var collection: JWTKeyCollection
        /// kid → the key's type, curve and pinned algorithm.
        var keys: [String: KeyInfo]
        var fetchedAt: Date
    }

    struct KeyInfo: Equatable {
        var kty: String
        var crv: String?
        var alg: String?
    }

    public init(issuers: [IssuerSettings], source: any JWKSSource, skew: TimeInterval, refetchInterval: TimeInterval, now: @escaping @Sendable () -> Date = { Date() }) {
        self.issuers = Dictionary(issuers.map { ($0.issuer, $0) }, uniquingKeysWith: { first, _ in first })
        self.source = source
        self.skew = skew
        self.refetchInterval = refetchInterval
        self.now = now
    }

    /// Validates `token` and returns who it names, or throws ``TokenError``.
    public func verify(_ token: String) async throws(TokenError) -> Identity {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3,
            let headerBytes = Base64URL.decode(parts[0]),
            let payloadBytes = Base64URL.decode(parts[1]),
            let header = (try? JSONSerialization.jsonObject(with: Data(headerBytes))) as? [String: Any],
            let claims = (try? JSONSerialization.jsonObject(with: Data(payloadBytes))) as? [String: Any]
        else { throw TokenError(.malformed) }

        guard let alg = header["alg"] as? String else { throw TokenError(.malformed, "no alg") }
        guard let iss = claims["iss"] as? String else { throw TokenError(.missingClaim, "iss") }
        guard let settings = issuers[iss] else { throw TokenError(.issuerNotTrusted) }
        guard settings.algorithms.contains(alg), IssuerSettings.supportedAlgorithms.contains(alg) else {
            throw TokenError(.algorithmNotAllowed, alg)
        }
        guard let kid = header["kid"] as? String, !kid.isEmpty else { throw TokenError(.unknownKey, "token has no kid") }

        let (collection, key) = try await self.key(kid: kid, issuer: settings)
        guard Self.algorithm(alg, fits: key) else { throw TokenError(.algorithmNotAllowed, "\(alg) does not fit key \(kid)") }
        do {
            _ = try await collection.verify(token, as: OpaqueClaims.self)
        } catch {
            throw TokenError(.signatureInvalid)
        }
        return try self.identity(from: claims, settings: settings)
    }

    private func identity(from claims: [String: Any], settings: IssuerSettings) throws(TokenError) -> Identity {
        let now = self.now()
        guard let exp = Self.number(claims["exp"]) else { throw TokenError(.missingClaim, "exp") }
        let expiresAt = Date(timeIntervalSince1970: exp)
        guard now.timeIntervalSince(expiresAt) < skew else { throw TokenError(.expired) }
        if let nbf = Self.number(claims["nbf"]), Date(timeIntervalSince1970: nbf).timeIntervalSince(now) > skew {
            throw TokenError(.notYetValid)
        }
        let audiences: [String]
        switch claims["aud"] {
        case let single as String: audiences = [single]
        case let many as [Any]: audiences = many.compactMap { $0 as? String }
        default: throw TokenError(.missingClaim, "aud")
        }
        guard audiences.contains(where: settings.audiences.contains) else { throw TokenError(.audienceMismatch) }
        guard let subject = claims["sub"] as? String, !subject.isEmpty else { throw TokenError(.missingClaim, "sub") }

        var groupsValue: Any? = claims
        for part in settings.groupsClaim.split(separator: ".") {
            groupsValue = (groupsValue as? [String: Any])?[String(part)]
        }
        let groups: [String]
        switch groupsValue {
        case let list as [Any]: groups = list.compactMap { $0 as? String }
        case let single as String: groups = single.split(separator: " ").map(String.init)
        default: groups = []
        }
        var actors: [String] = []
        var act = claims["act"] as? [String: Any]
        while let current = act, actors.count < 8 {
            if let sub = current["sub"] as? String { actors.append(sub) }
            act = current["act"] as? [String: Any]
        }
        return Identity(
            subject: subject, email: claims["email"] as? String, groups: groups, issuer: settings.issuer,
            tokenID: claims["jti"] as? String, expiresAt: expiresAt, actors: actors)
    }

    /// Returns the key for `kid`, fetching the JWKS on first use and refetching (rate-limited) when
    /// the kid is unknown, so rotation at the issuer is picked up without a restart.
    private func key(kid: String, issuer: IssuerSettings) async throws(TokenError) -> (JWTKeyCollection, KeyInfo) {
        if let set = keySets[issuer.issuer], let key = set.keys[kid] {
            return (set.collection, key)
        }
        if let set = keySets[issuer.issuer], now().timeIntervalSince(set.fetchedAt) < refetchInterval {
            throw TokenError(.unknownKey)
        }
        let bytes: [UInt8]
        do {
            bytes = try await source.fetchJWKS(for: issuer)
        } catch {
            if keySets[issuer.issuer] != nil { throw TokenError(.unknownKey) }
            throw TokenError(.issuerUnavailable)
        }
        let set = await Self.load(jwks: bytes, at: now())
        // A failed or empty fetch still counts for the rate limit, so a flood of bad kids cannot
        // turn into a flood of requests to the issuer.
        keySets[issuer.issuer] = set ?? KeySet(collection: JWTKeyCollection(), keys: keySets[issuer.issuer]?.keys ?? [:], fetchedAt: now())
        guard let set, let key = set.keys[kid] else { throw TokenError(.unknownKey) }
        return (set.collection, key)
    }

    /// Loads the usable keys of a JWKS one by one: one key jwt-kit cannot handle would otherwise
    /// make the whole set fail.
    private static func load(jwks bytes: [UInt8], at date: Date) async -> KeySet? {
        guard let document = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any],
            let rawKeys = document["keys"] as? [Any]
        else { return nil }
        let collection = JWTKeyCollection()
        var keys: [String: KeyInfo] = [:]
        for case let raw as [String: Any] in rawKeys {
            guard let kid = raw["kid"] as? String, let kty = raw["kty"] as? String, ["RSA", "EC", "OKP"].contains(kty) else { continue }
            if let use = raw["use"] as? String, use != "sig" { continue }
            if let alg = raw["alg"] as? String, !IssuerSettings.supportedAlgorithms.contains(alg) { continue }
            if raw["d"] != nil { continue }  // never accept private material as a verification key
            guard let data = try? JSONSerialization.data(withJSONObject: raw),
                let jwk = try? JSONDecoder().decode(JWK.self, from: data),
                (try? await collection.add(jwk: jwk)) != nil
            else { continue }
            keys[kid] = KeyInfo(kty: kty, crv: raw["crv"] as? String, alg: raw["alg"] as? String)
        }
        return KeySet(collection: collection, keys: keys, fetchedAt: date)
    }

    static func algorithm(_ alg: String, fits key: KeyInfo) -> Bool {
        if let pinned = key.alg, pinned != alg { return false }
        switch key.kty {
        case "RSA": return alg.hasPrefix("RS") || alg.hasPrefix("PS")
        case "EC":
            switch (alg, key.crv) {
            case ("ES256", "P-256"), ("ES384", "P-384"), ("ES512", "P-521"): return true
            default: return false
            }
        case "OKP": return alg == "EdDSA" && key.crv == "Ed25519"
        default: return false
        }
    }

    private static func number(_ value: Any?) -> Double? {
        switch value {
        case let number as NSNumber: return number.doubleValue
        case let int as Int: return Double(int)
        case let double as Double: return double
        default: return nil
        }
    }
}

/// jwt-kit needs a payload type; claims are checked by ``TokenVerifier`` itself.
private struct OpaqueClaims: JWTPayload {
    init(from decoder: any Decoder) throws {}
    func encode(to encoder: any Encoder) throws {}
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// Base64url without padding, as JWTs use it.
public enum Base64URL {
    /// Decodes base64url text (padding optional); nil when it is not base64url.
    public static func decode<S: StringProtocol>(_ text: S) -> [UInt8]? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        guard !base64.contains("=") || base64.hasSuffix("=") else { return nil }
        while base64.count % 4 != 0 { base64.append("=") }
        return Data(base64Encoded: base64).map { Array($0) }
    }
}
