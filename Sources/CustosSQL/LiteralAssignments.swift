import CustosCore

/// Assignments (a constant or parameter stored into a column is a use of that column) and passwords.
extension LiteralUseFinder {
    /// `INSERT INTO t (c1, c2) VALUES …` / `SELECT …` and `ON CONFLICT … DO UPDATE SET`; returns
    /// the scope for the rest of the statement (the target, also as `excluded`).
    func insert(_ node: Int32, _ parent: Int32) -> Int32 {
        guard let relation = tape.member(node, "relation") else { return parent }
        let table = tableName(relation)
        let scope = newScope(parent: parent, relation: relation, sources: [])
        scopes[Int(scope)].tables.updateValue(table, forKey: "excluded")
        let columns = targetNames(tape.member(node, "cols"))
        if let select = tape.member(node, "selectStmt"), let (type, fields) = tape.wrappedNode(select), type == "SelectStmt" {
            assignRows(fields, columns: columns, table: table)
        }
        if let conflict = tape.member(node, "onConflictClause"), let targets = tape.member(conflict, "targetList") {
            assign(targets, table: table)
        }
        return scope
    }

    /// MERGE's `WHEN … THEN UPDATE SET …` and `THEN INSERT (…) VALUES (…)`.
    func merge(_ node: Int32, table: String?) {
        guard let clauses = tape.member(node, "mergeWhenClauses") else { return }
        tape.forEachChild(clauses) { clause in
            guard let (type, fields) = tape.wrappedNode(clause), type == "MergeWhenClause" else { return }
            switch tape.string(fields, "commandType") {
            case "CMD_UPDATE":
                if let targets = tape.member(fields, "targetList") { assign(targets, table: table) }
            case "CMD_INSERT":
                guard let values = tape.member(fields, "values") else { return }
                let columns = targetNames(tape.member(fields, "targetList"))
                assignPositions(values, columns: columns, table: table)
            default:
                return
            }
        }
    }

    /// `SET c = expr` items (ResTargets), including `SET (a, b) = (…)` / `= (SELECT …)`.
    func assign(_ targets: Int32, table: String?) {
        tape.forEachChild(targets) { target in
            guard let (type, fields) = tape.wrappedNode(target), type == "ResTarget", let column = tape.string(fields, "name"),
                var value = tape.member(fields, "val")
            else { return }
            if let (valueType, multi) = tape.wrappedNode(value), valueType == "MultiAssignRef" {
                guard let source = tape.member(multi, "source"), let element = element(of: source, at: tape.int(multi, "colno") - 1) else {
                    return
                }
                value = element
            }
            for found in collect(value).values { record(found, .column(table: table, column: column)) }
        }
    }

    /// The `index`th value of a multi-assignment source: a ROW's argument or a subquery's output.
    private func element(of source: Int32, at index: Int) -> Int32? {
        guard index >= 0, let (type, fields) = tape.wrappedNode(source) else { return nil }
        switch type {
        case "RowExpr":
            return tape.member(fields, "args").flatMap { item($0, index) }
        case "SubLink":
            guard let select = tape.member(fields, "subselect"), let (selectType, query) = tape.wrappedNode(select), selectType == "SelectStmt",
                let targets = tape.member(query, "targetList"), let target = item(targets, index),
                let (targetType, resTarget) = tape.wrappedNode(target), targetType == "ResTarget"
            else { return nil }
            return tape.member(resTarget, "val")
        default:
            return nil
        }
    }

    private func item(_ list: Int32, _ index: Int) -> Int32? {
        var position = 0
        var found: Int32?
        tape.forEachChild(list) { child in
            if position == index { found = child }
            position += 1
        }
        return found
    }

    /// ResTarget names of an INSERT column list ([] when none was written).
    private func targetNames(_ list: Int32?) -> [String] {
        guard let list else { return [] }
        var names: [String] = []
        tape.forEachChild(list) { target in
            guard let (type, fields) = tape.wrappedNode(target), type == "ResTarget" else { return }
            names.append(tape.string(fields, "name") ?? "")
        }
        return names
    }

    /// The rows an INSERT stores: each VALUES row, or each SELECT's output list, through UNIONs.
    private func assignRows(_ select: Int32, columns: [String], table: String?) {
        var work = [select]
        while let fields = work.popLast() {
            for side in ["larg", "rarg"] as [StaticString] { if let arm = tape.member(fields, side) { work.append(arm) } }
            if let rows = tape.member(fields, "valuesLists") {
                tape.forEachChild(rows) { row in
                    if let (type, list) = tape.wrappedNode(row), type == "List", let items = tape.member(list, "items") {
                        assignPositions(items, columns: columns, table: table)
                    }
                }
            } else if let targets = tape.member(fields, "targetList") {
                var values: [Int32] = []
                tape.forEachChild(targets) { target in
                    if let (type, resTarget) = tape.wrappedNode(target), type == "ResTarget", let value = tape.member(resTarget, "val") {
                        values.append(value)
                    } else {
                        values.append(target)
                    }
                }
                for (index, value) in values.enumerated() { assignValue(value, index: index, columns: columns, table: table) }
            }
        }
    }

    /// The i-th value of `values` (a list) goes to column i, or to any column (`*`) without a list.
    private func assignPositions(_ values: Int32, columns: [String], table: String?) {
        var index = 0
        tape.forEachChild(values) { value in
            assignValue(value, index: index, columns: columns, table: table)
            index += 1
        }
    }

    private func assignValue(_ value: Int32, index: Int, columns: [String], table: String?) {
        let column: String
        if columns.isEmpty {
            column = "*"
        } else if index < columns.count {
            column = columns[index]
        } else {
            return  // more values than columns: PostgreSQL rejects the statement
        }
        for found in collect(value).values { record(found, .column(table: table, column: column)) }
    }

    /// `PASSWORD 'x'` role options and `password` FDW options: the DefElem is located at its
    /// keyword (or `ENCRYPTED`, `SET`, `ADD`), so the literal is the next string token.
    func passwords(_ node: Int32) {
        guard let options = tape.member(node, "options") else { return }
        tape.forEachChild(options) { option in
            guard let (type, element) = tape.wrappedNode(option), type == "DefElem", tape.string(element, "defname") == "password",
                let arg = tape.member(element, "arg"), let (argType, _) = tape.wrappedNode(arg), argType == "String"
            else { return }
            let location = tape.int(element, "location")
            let range =
                location >= 0
                ? lexer.nextString(from: location, before: statement.upperBound)
                : lexer.string(afterKeyword: "password", from: statement.lowerBound, before: statement.upperBound)
            if let range { record(range: range, role: .password) }
        }
    }
}
