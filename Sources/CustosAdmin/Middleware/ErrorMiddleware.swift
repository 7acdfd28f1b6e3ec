import Hummingbird
import Logging

/// Answers every error as JSON `{"error": {"code", "message"}}`: ours as they are, Hummingbird's
/// by status (an unmatched path is 404 `not_found`, a known path with another method 405), and
/// anything else as a bare 500 (logged by type, never by contents).
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as AdminError {
            return error.response()
        } catch let error as any HTTPResponseError {
            if error.status == .notFound {
                let path = request.uri.path
                let allowed = AdminAPI.routes.filter { AdminAPI.matches(template: $0.path, path: path) }.map(\.method)
                if allowed.isEmpty { return AdminError.routeNotFound(request.method, path).response() }
                return AdminError.methodNotAllowed(request.method, allowed: allowed).response()
            }
            return AdminError.http(error.status).response()
        } catch {
            logger.info("admin request failed", metadata: ["error.type": "\(type(of: error))"])
            return AdminError.internalError.response()
        }
    }
}
