import CustosCore
import Foundation
import Hummingbird

/// An error answered as `{"error": {"code": "...", "message": "..."}}`. The message is written
/// for the client: it names what failed, never token contents or internal errors.
struct AdminError: Error, HTTPResponseError, CustomStringConvertible {
    let status: HTTPResponse.Status
    /// Stable, machine-readable (`forbidden`, `self_approval`, …).
    let code: String
    let message: String
    var headers: HTTPFields = [:]

    var description: String { "\(status.code) \(code): \(message)" }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        response()
    }

    func response() -> Response {
        var response = JSONBody.response(["error": ["code": code, "message": message]], status: status)
        response.headers.append(contentsOf: headers)
        return response
    }

    // MARK: Authentication and authorization

    /// No usable `Authorization: Bearer` header.
    static func unauthenticated(_ message: String) -> AdminError {
        AdminError(status: .unauthorized, code: "unauthorized", message: message, headers: [.wwwAuthenticate: "Bearer"])
    }

    /// A bearer token that failed verification; `check` names the failed check.
    static func invalidToken(_ check: String) -> AdminError {
        AdminError(
            status: .unauthorized, code: "invalid_token", message: "invalid token: \(check)",
            headers: [.wwwAuthenticate: #"Bearer error="invalid_token""#])
    }

    static func forbidden(_ message: String) -> AdminError {
        AdminError(status: .forbidden, code: "forbidden", message: message)
    }

    // MARK: Requests

    static func badRequest(_ code: String, _ message: String) -> AdminError {
        AdminError(status: .badRequest, code: code, message: message)
    }

    static func routeNotFound(_ method: HTTPRequest.Method, _ path: String) -> AdminError {
        AdminError(status: .notFound, code: "not_found", message: "no route \(method.rawValue) \(path)")
    }

    static func methodNotAllowed(_ method: HTTPRequest.Method, allowed: [String]) -> AdminError {
        AdminError(
            status: .methodNotAllowed, code: "method_not_allowed", message: "method \(method.rawValue) not allowed here",
            headers: [.allow: allowed.joined(separator: ", ")])
    }

    static func sessionNotFound(_ id: String) -> AdminError {
        AdminError(status: .notFound, code: "not_found", message: "no session \(id)")
    }

    /// A route whose backing part this gateway was built without.
    static func notConfigured(_ what: String) -> AdminError {
        AdminError(status: .notFound, code: "not_configured", message: what)
    }

    static let internalError = AdminError(status: .internalServerError, code: "internal", message: "internal error")

    /// Any other Hummingbird error (body too large, …): its status, a generic code.
    static func http(_ status: HTTPResponse.Status) -> AdminError {
        let code: String =
            switch status {
            case .contentTooLarge: "payload_too_large"
            case .badRequest: "bad_request"
            default: status.reasonPhrase.lowercased().replacingOccurrences(of: " ", with: "_")
            }
        return AdminError(status: status, code: code, message: status.reasonPhrase.lowercased())
    }

    // MARK: Approvals

    static func approvalNotFound(_ id: String) -> AdminError {
        AdminError(status: .notFound, code: "approval_not_found", message: "no approval \(id)")
    }

    /// How the approval book's refusals are answered.
    static func approval(_ error: ApprovalError, id: String) -> AdminError {
        switch error {
        case .notFound: approvalNotFound(id)
        case .selfApproval: AdminError(status: .forbidden, code: "self_approval", message: error.description)
        case .notEligible: AdminError(status: .forbidden, code: "not_eligible", message: error.description)
        case .notPending: AdminError(status: .conflict, code: "not_pending", message: error.description)
        case .alreadyDecided: AdminError(status: .conflict, code: "already_decided", message: error.description)
        case .notRecorded: AdminError(status: .serviceUnavailable, code: "not_recorded", message: error.description)
        case .tooManyPending: AdminError(status: .tooManyRequests, code: "too_many_pending", message: error.description)
        }
    }
}

/// JSON responses: sorted keys, `Content-Type: application/json`.
enum JSONBody {
    static func response(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding our own Codable values cannot fail; should it, the client still gets JSON.
        let data = (try? encoder.encode(value)) ?? Data(#"{"error":{"code":"internal","message":"internal error"}}"#.utf8)
        return Response(
            status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// A response whose body is canonical JSON (records keep their exact text).
    static func response(canonical value: CanonicalJSON, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: value.bytes)))
    }
}
