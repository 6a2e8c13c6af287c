-- A conversation records the agent that answers it by name: the set of
-- agents is whatever the configuration defines. `kind` stays for the seed's
-- routes; the conversations made before this take the agent of their kind.
ALTER TABLE conversations ADD COLUMN agent TEXT;
UPDATE conversations SET agent = kind;
