-- What an incident is about: a hook that failed for good (`hook`), a decision condition that
-- could not be evaluated (`condition`), or a dossier with nothing left to wait on (`stuck`).
ALTER TABLE incidents ADD COLUMN kind TEXT NOT NULL DEFAULT 'hook';
