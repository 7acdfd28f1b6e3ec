import CustosCore
import Hummingbird
import Logging

/// Who is calling, and whether their roles allow the route: `Authorization: Bearer <OIDC token>`
/// verified by the gateway's ``TokenVerifier``, roles from the identity's groups.
///
/// Tokens are never logged and never echoed; a refusal names only the failed check.
struct Authorizer: Sendable {
    let verifier: TokenVerifier
    let settings: AdminSettings
    let logger: Logger

    /// The caller's identity if a valid token names someone holding one of `allowed`.
    func authorize(_ request: Request, allowed: Set<AdminRole>) async throws(AdminError) -> Identity {
        let token = try Self.bearerToken(request.headers)
        let identity: Identity
        do {
            identity = try await verifier.verify(token)
        } catch {
            logger.info("admin token refused", metadata: ["admin.check": "\(error.check.rawValue)"])
            throw .invalidToken(error.description)
        }
        let held = settings.roles(of: identity)
        guard !held.isDisjoint(with: allowed) else {
            logger.info("admin route forbidden", metadata: ["identity.sub": "\(identity.subject)", "admin.roles": "\(held.map(\.rawValue).sorted())"])
            let needed = AdminRole.allCases.filter(allowed.contains).map(\.rawValue).joined(separator: ", ")
            throw .forbidden("this route needs one of the roles \(needed)")
        }
        return identity
    }

    /// The token of a single, well-formed `Authorization: Bearer` header.
    static func bearerToken(_ headers: HTTPFields) throws(AdminError) -> String {
        let values = headers[values: .authorization]
        guard !values.isEmpty else { throw .unauthenticated("missing Authorization: Bearer token") }
        guard values.count == 1 else { throw .unauthenticated("more than one Authorization header") }
        let value = values[0].trimmingWhitespace
        guard let space = value.firstIndex(of: " "), value[..<space].lowercased() == "bearer" else {
            throw .unauthenticated("the Authorization header is not a Bearer token")
        }
        let token = value[value.index(after: space)...].trimmingWhitespace
        guard !token.isEmpty, !token.contains(where: \.isWhitespace) else {
            throw .unauthenticated("the Authorization header is not a Bearer token")
        }
        return String(token)
    }
}

extension StringProtocol {
    var trimmingWhitespace: SubSequence {
        let start = firstIndex(where: { !$0.isWhitespace }) ?? endIndex
        let end = lastIndex(where: { !$0.isWhitespace }).map(index(after:)) ?? start
        return self[start..<end]
    }
}
