-- Erasure: where a pseudonym already has a spend limit (from an earlier erasure of the
-- same subject) of a period the subject has one of too, the older one goes, so the
-- subject's can move there. $1 subjects, $2 pseudonyms (parallel).
DELETE FROM spend_limits o USING unnest($1::text[], $2::text[]) AS m(sub, alias), spend_limits n
WHERE o.scope_type = 'user' AND o.scope_id = m.alias
  AND n.scope_type = 'user' AND n.scope_id = m.sub AND n.period = o.period
