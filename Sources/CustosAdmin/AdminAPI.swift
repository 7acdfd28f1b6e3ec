import CustosCore
import Hummingbird
import Logging

/// The admin HTTP API: approvals (list, show, approve, deny), session search for auditors, the
/// evidence key and a health check, as JSON.
///
/// Every route but `GET /healthz` and `GET /api/v1/evidence/key` needs `Authorization: Bearer <OIDC token>`, verified by the
/// gateway's ``TokenVerifier``; roles (``AdminRole``) come from the token's groups through
/// ``AdminSettings/roles``. `docs/openapi.yaml` describes the same routes (a test keeps the two equal).
///
/// ## Topics
/// - ``application(settings:verifier:approvals:audit:evidence:logger:onServerRunning:)``
/// - ``router(settings:verifier:approvals:audit:evidence:logger:)``
/// - ``routes``
public enum AdminAPI {
    /// Every route as (method, OpenAPI-style path), in registration order.
    public static let routes: [(method: String, path: String)] = Endpoint.allCases.map { ($0.method.rawValue, $0.path) }

    /// The API as a Hummingbird application: a ServiceLifecycle `Service` listening on
    /// `settings.host:settings.port`. `onServerRunning` gets the bound port (useful with port 0).
    public static func application(
        settings: AdminSettings, verifier: TokenVerifier, approvals: ApprovalBook, audit: (any AuditLog)? = nil, evidence: EvidenceKey? = nil,
        logger: Logger, onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> Application<RouterResponder<BasicRequestContext>> {
        Application(
            router: router(settings: settings, verifier: verifier, approvals: approvals, audit: audit, evidence: evidence, logger: logger),
            configuration: ApplicationConfiguration(address: .hostname(settings.host, port: settings.port), serverName: nil),
            onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? settings.port) },
            logger: logger)
    }

    /// The routes alone, for embedding or for `app.test(.router)`.
    public static func router(
        settings: AdminSettings, verifier: TokenVerifier, approvals: ApprovalBook, audit: (any AuditLog)? = nil, evidence: EvidenceKey? = nil,
        logger: Logger
    ) -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: ErrorMiddleware(logger: logger))
        let authorizer = Authorizer(verifier: verifier, settings: settings, logger: logger)
        let handlers = ApprovalRoutes(authorizer: authorizer, approvals: approvals, logger: logger)
        let auditHandlers = AuditRoutes(authorizer: authorizer, audit: audit, evidence: evidence)
        for endpoint in Endpoint.allCases {
            router.on(RouterPath(endpoint.path), method: endpoint.method) { request, context in
                switch endpoint {
                case .listSessions, .getSession, .evidenceKey: try await auditHandlers.respond(endpoint, to: request, context: context)
                default: try await handlers.respond(endpoint, to: request, context: context)
                }
            }
        }
        return router
    }

    /// Whether a concrete path matches an OpenAPI-style template (`{name}` matches one segment).
    static func matches(template: String, path: String) -> Bool {
        let want = template.split(separator: "/")
        let have = path.split(separator: "/")
        guard want.count == have.count else { return false }
        return zip(want, have).allSatisfy { pattern, segment in pattern.hasPrefix("{") && pattern.hasSuffix("}") || pattern == segment }
    }
}

/// What the API does, one case per route; the roles that may call it (nil: anyone).
enum Endpoint: CaseIterable {
    case health, listApprovals, getApproval, approve, deny, listSessions, getSession, evidenceKey

    var method: HTTPRequest.Method {
        switch self {
        case .health, .listApprovals, .getApproval, .listSessions, .getSession, .evidenceKey: .get
        case .approve, .deny: .post
        }
    }

    var path: String {
        switch self {
        case .health: "/healthz"
        case .listApprovals: "/api/v1/approvals"
        case .getApproval: "/api/v1/approvals/{id}"
        case .approve: "/api/v1/approvals/{id}/approve"
        case .deny: "/api/v1/approvals/{id}/deny"
        case .listSessions: "/api/v1/sessions"
        case .getSession: "/api/v1/sessions/{id}"
        case .evidenceKey: "/api/v1/evidence/key"
        }
    }

    var roles: Set<AdminRole>? {
        switch self {
        case .health, .evidenceKey: nil
        case .listApprovals, .getApproval: [.approver, .auditor, .admin]
        case .listSessions, .getSession: [.auditor, .admin]
        case .approve, .deny: [.approver, .admin]
        }
    }
}
