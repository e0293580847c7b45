-- Whether a sign-in family exists at all (revoked or not), for the admin
-- API's 404. $1 family id.
SELECT revoked_at FROM session_families WHERE family_id = $1
