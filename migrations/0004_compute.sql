-- What a finished job computed in (fp32, bf16, fp16) and on (cpu, cuda:0, metal:0): shown in
-- its PNG parameters too, and reused by the buttons under it so that they reproduce its image
-- where the host still offers that precision. NULL for jobs finished by older versions.

ALTER TABLE jobs ADD COLUMN precision TEXT;
ALTER TABLE jobs ADD COLUMN device TEXT;
