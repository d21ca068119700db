export * from './adapter.js';
export * from './capabilities.js';
export * from './errors.js';
export * from './parse.js';
export * from './runner.js';
export * from './fence.js';
export * from './mounts.js';
