-- Every OIDC subject an email (any letter case) is stored with: the people
-- `gatehouse privacy` exports or erases. $1 email.
SELECT sub FROM principals WHERE lower(email) = lower($1)
UNION SELECT sub FROM session_families WHERE lower(email) = lower($1)
UNION SELECT sub FROM device_grants WHERE lower(email) = lower($1) AND sub IS NOT NULL
UNION SELECT sub FROM usage_records WHERE lower(email) = lower($1)
ORDER BY 1
