import CustosCore
import Foundation
import Hummingbird
import Logging

/// The handlers: authorize per ``Endpoint/roles``, then read or decide through the ``ApprovalBook``.
struct ApprovalRoutes: Sendable {
    let authorizer: Authorizer
    let approvals: ApprovalBook
    let logger: Logger

    /// Largest decision body read.
    static let maxBody = 64 * 1024

    func respond(_ endpoint: Endpoint, to request: Request, context: BasicRequestContext) async throws -> Response {
        guard let roles = endpoint.roles else { return JSONBody.response(["status": "ok"]) }
        let identity = try await authorizer.authorize(request, allowed: roles)
        switch endpoint {
        case .health:
            return JSONBody.response(["status": "ok"])
        case .listApprovals:
            return try list(request)
        case .getApproval:
            let id = try context.parameters.require("id")
            guard let approval = approvals.get(id) else { throw AdminError.approvalNotFound(id) }
            return JSONBody.response(approval)
        case .approve:
            return try await decide(request, context: context, by: identity, verdict: .approve)
        case .deny:
            return try await decide(request, context: context, by: identity, verdict: .deny)
        case .listSessions, .getSession, .evidenceKey:
            throw AdminError.internalError  // routed to AuditRoutes
        }
    }

    struct ApprovalList: Encodable {
        var approvals: [Approval]
    }

    private func list(_ request: Request) throws(AdminError) -> Response {
        var status: Approval.Status?
        if let value = request.uri.queryParameters["status"] {
            guard let parsed = Approval.Status(rawValue: String(value)) else {
                let allowed = Approval.Status.allCases.map(\.rawValue).joined(separator: ", ")
                throw .badRequest("invalid_status", "status must be one of \(allowed)")
            }
            status = parsed
        }
        return JSONBody.response(ApprovalList(approvals: approvals.list(status: status)))
    }

    /// The body of approve and deny.
    struct DecisionBody: Decodable {
        var comment: String?
    }

    private func decide(_ request: Request, context: BasicRequestContext, by identity: Identity, verdict: Approval.Decision.Verdict) async throws
        -> Response
    {
        let id = try context.parameters.require("id")
        let body = try await request.body.collect(upTo: Self.maxBody)
        var comment: String?
        if body.readableBytesView.contains(where: { !Character(Unicode.Scalar($0)).isWhitespace }) {
            do {
                comment = try JSONDecoder().decode(DecisionBody.self, from: Data(body.readableBytesView)).comment
            } catch {
                throw AdminError.badRequest("invalid_body", #"the body must be a JSON object such as {"comment": "…"}"#)
            }
        }
        comment = comment.map { String($0.trimmingWhitespace) }.flatMap { $0.isEmpty ? nil : $0 }
        if verdict == .deny && comment == nil {
            throw AdminError.badRequest("comment_required", "a deny needs a non-empty comment")
        }
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Approval, ApprovalError>, Never>) in
            approvals.decide(id, by: identity, verdict: verdict, comment: comment) { continuation.resume(returning: $0) }
        }
        var metadata: Logger.Metadata = ["approval.id": "\(id)", "identity.sub": "\(identity.subject)", "approval.verdict": "\(verdict.rawValue)"]
        switch result {
        case .success(let approval):
            metadata["approval.status"] = "\(approval.status.rawValue)"
            logger.info("approval decided", metadata: metadata)
            return JSONBody.response(approval)
        case .failure(let error):
            metadata["approval.refusal"] = "\(error)"
            logger.info("approval decision refused", metadata: metadata)
            throw AdminError.approval(error, id: id)
        }
    }
}
