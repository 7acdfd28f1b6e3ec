import AsyncHTTPClient
import CustosCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Synchronization

/// Tells configured webhooks about approvals: when one is requested and when it is decided. The
/// payload is Slack-compatible (`text`) with the structured approval beside it. Delivery runs in
/// the background with retries and backoff; a failing webhook never delays a statement.
final class WebhookNotifier: Sendable {
    private let urls: [String]
    private let client: HTTPClient
    private let logger: Logger
    private let inFlight = Mutex(0)
    /// Deliveries beyond this many at once are dropped (and logged): a dead webhook cannot grow memory.
    private static let maxInFlight = 1000
    private static let attempts = 5

    init(urls: [String], client: HTTPClient = .shared, logger: Logger) {
        self.urls = urls
        self.client = client
        self.logger = logger
    }

    func notify(_ notice: ApprovalNotice) {
        guard !urls.isEmpty, let body = Self.payload(notice) else { return }
        for url in urls {
            let admitted = inFlight.withLock { count in
                guard count < Self.maxInFlight else { return false }
                count += 1
                return true
            }
            guard admitted else {
                logger.warning("webhook delivery dropped: too many in flight", metadata: ["webhook": "\(Self.host(url))"])
                continue
            }
            Task {
                await self.deliver(body, to: url)
                self.inFlight.withLock { $0 -= 1 }
            }
        }
    }

    private func deliver(_ body: Data, to url: String) async {
        for attempt in 0..<Self.attempts {
            do {
                var request = HTTPClientRequest(url: url)
                request.method = .POST
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(bytes: body))
                let response = try await client.execute(request, timeout: .seconds(5))
                if (200..<300).contains(response.status.code) { return }
            } catch {
                // Retried below; the URL itself (which may hold a secret path) is never logged.
            }
            if attempt + 1 < Self.attempts { try? await Task.sleep(for: .milliseconds(250 << attempt)) }
        }
        logger.warning("webhook delivery failed after retries", metadata: ["webhook": "\(Self.host(url))", "attempts": "\(Self.attempts)"])
    }

    /// Slack's escaping of `&`, `<` and `>`: a statement cannot mention a channel or disguise a link.
    static func slackEscaped(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    static func payload(_ notice: ApprovalNotice) -> Data? {
        let approval = notice.approval
        let who = approval.requester.email ?? approval.requester.subject
        let message: String
        switch notice.event {
        case .requested:
            message = "Custos: approval \(approval.id) requested by \(who) on \(approval.connection) (rule \(approval.rule)): \(approval.text.prefix(500))"
        case .decided:
            let decision = notice.decision
            message = "Custos: approval \(approval.id) \(approval.status.rawValue) — \(decision?.verdict.rawValue ?? "decided") by "
                + "\(decision?.approverEmail ?? decision?.approver ?? "?")\(decision?.comment.map { ": \($0)" } ?? "")"
        }
        let text = slackEscaped(message)
        struct Body: Encodable {
            var text: String
            var event: String
            var approval: Approval
            var decision: Approval.Decision?

            enum CodingKeys: String, CodingKey { case text, event, approval, decision }

            // `decision` is always present, as null when there is none, so receivers can read it.
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(text, forKey: .text)
                try container.encode(event, forKey: .event)
                try container.encode(approval, forKey: .approval)
                if let decision { try container.encode(decision, forKey: .decision) } else { try container.encodeNil(forKey: .decision) }
            }
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try? encoder.encode(Body(text: text, event: "approval.\(notice.event.rawValue)", approval: approval, decision: notice.decision))
    }

    private static func host(_ url: String) -> String {
        URL(string: url)?.host ?? "?"
    }
}
