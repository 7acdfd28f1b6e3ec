import Foundation

/// Who is asking: built only from a validated token.
public struct Identity: Sendable, Equatable {
    /// The token's `sub`.
    public var subject: String
    /// The token's `email`, when present.
    public var email: String?
    /// Groups read from the issuer's configured claim.
    public var groups: [String]
    /// The issuer that vouched for this identity (`iss`).
    public var issuer: String
    /// The token's `jti`, when present.
    public var tokenID: String?
    /// When the token stops being valid (`exp`).
    public var expiresAt: Date
    /// Delegation chain from the `act` claim, outermost actor first (an agent acting for a person).
    public var actors: [String]

    public init(subject: String, email: String?, groups: [String], issuer: String, tokenID: String?, expiresAt: Date, actors: [String] = []) {
        self.subject = subject
        self.email = email
        self.groups = groups
        self.issuer = issuer
        self.tokenID = tokenID
        self.expiresAt = expiresAt
        self.actors = actors
    }
}

/// One trusted OIDC issuer.
public struct IssuerSettings: Sendable, Equatable {
    /// The exact `iss` value, also the base of discovery.
    public var issuer: String
    /// Accepted `aud` values; a token must name at least one.
    public var audiences: [String]
    /// Accepted JWS algorithms; never `none` and never HMAC (configuration refuses them).
    public var algorithms: Set<String>
    /// Claim holding the groups; a dotted path reaches into nested objects.
    public var groupsClaim: String

    public init(issuer: String, audiences: [String], algorithms: Set<String>, groupsClaim: String) {
        self.issuer = issuer
        self.audiences = audiences
        self.algorithms = algorithms
        self.groupsClaim = groupsClaim
    }

    /// Algorithms Custos can verify with a public key.
    public static let supportedAlgorithms: Set<String> = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
}

/// Why a token was refused. The description is what the client sees after "authentication failed: ".
public struct TokenError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The failed check.
    public enum Check: String, Sendable {
        case malformed = "malformed token"
        case algorithmNotAllowed = "algorithm not allowed"
        case issuerNotTrusted = "issuer not trusted"
        case unknownKey = "unknown signing key"
        case signatureInvalid = "signature invalid"
        case expired = "token expired"
        case notYetValid = "token not yet valid"
        case audienceMismatch = "audience mismatch"
        case missingClaim = "missing claim"
        case issuerUnavailable = "issuer keys unavailable"
    }

    public var check: Check
    /// Extra detail safe to show (claim names, algorithm names; never token contents).
    public var detail: String?

    public init(_ check: Check, _ detail: String? = nil) {
        self.check = check
        self.detail = detail
    }

    public var description: String {
        detail.map { "\(check.rawValue): \($0)" } ?? check.rawValue
    }

    /// Two errors are the same when the same check failed; the detail is informative only.
    public static func == (lhs: TokenError, rhs: TokenError) -> Bool {
        lhs.check == rhs.check
    }
}
