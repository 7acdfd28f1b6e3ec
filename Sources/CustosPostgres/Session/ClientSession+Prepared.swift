import CustosCore

/// What the session knows of prepared statements and portals by name, SQL-level (`PREPARE`,
/// `EXECUTE`, `DEALLOCATE`, `CLOSE`) and protocol-level (Parse, Bind) alike: the backend keeps
/// both in one namespace, so a change on one side invalidates what the other side knew.
extension ClientSession {
    /// An SQL-level `EXECUTE name` is what `PREPARE name AS …` prepared in this session: decide it
    /// as that statement. An unknown name stays opaque.
    func resolvePrepared(_ statements: [StatementInfo]) -> [StatementInfo] {
        statements.map { statement in
            guard statement.kind == "execute", let name = statement.preparedName, let prepared = sqlPrepared[exact: name] else { return statement }
            var resolved = prepared
            resolved.kind = prepared.preparedKind ?? "execute"
            resolved.text = statement.text
            resolved.normalized = statement.normalized
            resolved.fingerprint = statement.fingerprint
            resolved.preparedName = name
            resolved.preparedKind = nil
            return resolved
        }
    }

    /// Forgets what `DEALLOCATE` / `DISCARD` drop, at once (failing closed). What a `PREPARE`
    /// prepares is remembered only once it succeeded (``preparedSucceeded(_:)``): a PREPARE the
    /// backend refused (a duplicate name, an error) must not redefine the name.
    ///
    /// SQL-level and protocol-level prepared statements are one namespace at the backend, as are
    /// cursors and portals: `DEALLOCATE` drops a Parse'd name too, and a later `PREPARE` may take
    /// it, so what the protocol side knew of the name goes as well; `CLOSE` (and `DISCARD`) may
    /// close a portal that a later `DECLARE` reuses, so every named portal's analysis and row plan
    /// go (an Execute of it is then opaque, not decided or masked as what it was).
    func trackPrepared(_ statements: [StatementInfo], number: Int) {
        if statements.contains(where: { $0.kind == "prepare" }) { pendingPrepares[number] = statements }
        for statement in statements {
            switch statement.kind {
            case "prepare": break
            case "deallocate":
                if let name = statement.preparedName {
                    sqlPrepared[exact: name] = nil
                    preparedStatements[exact: name] = nil
                } else {
                    sqlPrepared.removeAll()
                    forgetNamedStatements()
                }
            case "discard":
                sqlPrepared.removeAll()
                // DISCARD ALL (the keyword cannot be quoted; a comment saying "all" only forgets more).
                if statement.text.uppercased().contains("ALL") {
                    forgetNamedStatements()
                    forgetNamedPortals()
                }
            case "close_portal":
                forgetNamedPortals()
            default: break
            }
        }
    }

    /// SQL cannot name the unnamed statement or portal, so those stay.
    private func forgetNamedStatements() {
        preparedStatements = preparedStatements.filter { $0.key.text.isEmpty }
    }

    private func forgetNamedPortals() {
        portals = portals.filter { $0.key.text.isEmpty }
        portalPlans = portalPlans.filter { $0.key.text.isEmpty }
        describedPortals = describedPortals.filter { $0.text.isEmpty }
    }

    /// A statement string holding `PREPARE` completed without error: its names now exist.
    func preparedSucceeded(_ number: Int) {
        guard let statements = pendingPrepares.removeValue(forKey: number) else { return }
        for statement in statements where statement.kind == "prepare" {
            guard let name = statement.preparedName else { continue }
            // The backend had no statement of that name, whatever the protocol side remembered.
            preparedStatements[exact: name] = nil
            sqlPrepared[exact: name] = statement
        }
    }
}
